//! `labgpu slurm epilog`, run by slurmd as root when a job ends (slurm.conf `Epilog=`):
//! stops and removes, through Docker's API and all at once, the containers the proxy
//! recorded as created from inside the job. Docker's containers are dockerd's children, not
//! the job's, so Slurm's own cleanup never reaches them.
//!
//! Exit 0 when none of the job's containers remain (again, after a second run: a container
//! already gone is fine). Exit 1 when one survives, or when the records cannot be read:
//! Slurm then drains the node, because a surviving container would keep GPUs that Slurm
//! hands to the next job. The whole run stays within 30 s.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JobId;
use crate::docker_api::{self, DockerApiError};
use crate::policy::Policy;
use crate::records;

/// The longest an epilog may take (slurmd's own limit is longer; a node stuck in epilog is
/// worse than one drained).
pub const BUDGET: Duration = Duration::from_secs(30);

/// Kept back from the stops and removals for the final look at what is left.
const CHECK_RESERVE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Options {
    pub policy: PathBuf,
    /// Docker's own socket.
    pub docker: PathBuf,
    /// The job; default: `SLURM_JOB_ID` from slurmd.
    pub job: Option<JobId>,
}

/// What became of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Removed,
    AlreadyGone,
    /// A call failed, yet Docker no longer has it.
    GoneAnyway(String),
    /// Still there, or Docker cannot say: why.
    Failed(String),
}

/// Runs the epilog; the exit status for slurmd.
pub fn run(opts: &Options) -> i32 {
    let start = Instant::now();
    let job = match opts.job.map(Ok).unwrap_or_else(job_from_env) {
        Ok(j) => j,
        Err(e) => {
            say(&format!("labgpu slurm epilog: {e}"));
            return 1;
        }
    };
    let policy = match Policy::load(&opts.policy) {
        Ok(p) => p,
        Err(e) => {
            say(&format!(
                "job {job}: cannot tell which containers the job has ({e}); exiting 1 so that Slurm drains the node"
            ));
            return 1;
        }
    };
    crate::log::init(policy.runtime.log.as_ref().map(|l| l.as_path()));
    let Some(proxy) = &policy.proxy else {
        say(&format!(
            "job {job}: {} has no [proxy] table, so no container is tied to a job",
            opts.policy.display()
        ));
        return 0;
    };
    let state_dir = proxy.state_dir.as_path();
    let ids = match records::for_job(state_dir, job) {
        Ok(ids) => ids,
        Err(e) => {
            say(&format!(
                "job {job}: cannot read the proxy's records ({e}); exiting 1 so that Slurm drains the node"
            ));
            return 1;
        }
    };
    if ids.is_empty() {
        say(&format!("job {job}: no containers"));
        return 0;
    }
    let stop = Duration::from_secs(policy.slurm_or_default().stop_timeout);
    let outcomes = remove_all(&opts.docker, &ids, stop, start);
    let survivors = report(state_dir, job, &ids, outcomes);
    if survivors > 0 {
        say(&format!(
            "job {job}: {survivors} of its {} containers survive and may hold GPUs Slurm gives the next job; exiting 1 so that Slurm drains the node (scontrol update nodename=… state=resume after removing them)",
            ids.len()
        ));
        return 1;
    }
    0
}

/// One line per container; the records of those that are gone are dropped. Returns how many
/// survive.
fn report(state_dir: &Path, job: JobId, ids: &[String], outcomes: Vec<Outcome>) -> usize {
    let mut survivors = 0;
    for (id, outcome) in ids.iter().zip(outcomes) {
        let owner = records::recorded(state_dir, id)
            .ok()
            .flatten()
            .map_or("?".to_string(), |r| r.owner);
        let short: String = id.chars().take(12).collect();
        let survived = matches!(outcome, Outcome::Failed(_));
        let line = match outcome {
            Outcome::Removed => format!("container {short} ({owner}) stopped and removed"),
            Outcome::AlreadyGone => format!("container {short} ({owner}) was already gone"),
            Outcome::GoneAnyway(why) => format!("container {short} ({owner}) is gone ({why})"),
            Outcome::Failed(why) => {
                survivors += 1;
                format!("container {short} ({owner}) SURVIVES: {why}")
            }
        };
        // A survivor keeps its record, so that the next run (by hand) finds it again.
        if !survived {
            let _ = records::forget(state_dir, id);
        }
        say(&format!("job {job}: {line}"));
    }
    survivors
}

/// The job id slurmd gives an epilog.
fn job_from_env() -> Result<JobId, String> {
    let raw = std::env::var("SLURM_JOB_ID")
        .or_else(|_| std::env::var("SLURM_JOBID"))
        .map_err(|_| {
            "SLURM_JOB_ID is not set: run it as slurm.conf's Epilog, or give --job".to_string()
        })?;
    raw.trim()
        .parse()
        .map_err(|_| format!("SLURM_JOB_ID={raw:?} is not a job id"))
}

/// Stops and removes every container in parallel, then looks again at the ones that failed,
/// all within `BUDGET` of `start`.
fn remove_all(docker: &Path, ids: &[String], stop: Duration, start: Instant) -> Vec<Outcome> {
    let deadline = start + BUDGET - CHECK_RESERVE;
    let check = |id: &str, outcome: Outcome| match outcome {
        Outcome::Failed(why) => {
            let left = (start + BUDGET).saturating_duration_since(Instant::now());
            match still_there(docker, id, left.min(CHECK_RESERVE)) {
                Ok(false) => Outcome::GoneAnyway(why),
                Ok(true) | Err(_) => Outcome::Failed(why),
            }
        }
        done => done,
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| scope.spawn(move || check(id, remove(docker, id, stop, deadline))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Failed("the removal panicked".into()))
            })
            .collect()
    })
}

/// `docker stop -t <stop>` then `docker rm -f`, as the API calls them.
fn remove(docker: &Path, id: &str, stop: Duration, deadline: Instant) -> Outcome {
    let left = || deadline.saturating_duration_since(Instant::now());
    let within = |limit: Duration| limit.min(left()).max(Duration::from_secs(1));
    let stop_path = format!("/containers/{id}/stop?t={}", stop.as_secs());
    let stopped = docker_api::request_within(
        docker,
        "POST",
        &stop_path,
        within(stop + Duration::from_secs(5)),
    );
    let stop_problem = match stopped {
        Ok(_) => None,
        Err(e) if status(&e) == Some(304) => None,
        Err(e) if status(&e) == Some(404) => return Outcome::AlreadyGone,
        // `rm -f` kills what `stop` could not stop: try it anyway.
        Err(e) => Some(e.to_string()),
    };
    if left().is_zero() {
        return Outcome::Failed(stop_problem.unwrap_or_else(|| "no time left to remove it".into()));
    }
    match docker_api::request_within(
        docker,
        "DELETE",
        &format!("/containers/{id}?force=1"),
        within(left()),
    ) {
        Ok(_) => Outcome::Removed,
        Err(e) if status(&e) == Some(404) => Outcome::AlreadyGone,
        Err(e) => Outcome::Failed(match stop_problem {
            Some(s) => format!("{s}; then {e}"),
            None => e.to_string(),
        }),
    }
}

fn status(e: &DockerApiError) -> Option<u16> {
    match e {
        DockerApiError::Status { status, .. } => Some(*status),
        _ => None,
    }
}

/// Whether Docker still has `id` (an unanswered question counts as yes).
fn still_there(docker: &Path, id: &str, timeout: Duration) -> Result<bool, DockerApiError> {
    match docker_api::request_within(
        docker,
        "GET",
        &format!("/containers/{id}/json"),
        timeout.max(Duration::from_millis(100)),
    ) {
        Ok(_) => Ok(true),
        Err(e) if status(&e) == Some(404) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One line per event: to the decision log and to stderr (slurmd's log at debug level, or
/// the terminal of an administrator running it by hand).
fn say(line: &str) {
    tracing::info!("slurm epilog: {line}");
    eprintln!("labgpu slurm epilog: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A Docker stand-in: answers by method and path prefix, records what it was asked.
    fn fake_docker(
        dir: &Path,
        answers: Vec<(&'static str, &'static str)>,
    ) -> (PathBuf, Arc<Mutex<Vec<String>>>) {
        let sock = dir.join("docker.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                // Up to the end of the headers, as dockerd reads (the client writes in pieces).
                let mut raw = Vec::new();
                let mut byte = [0u8; 1];
                while !raw.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    raw.push(byte[0]);
                }
                let req = String::from_utf8_lossy(&raw).to_string();
                let line = req.lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line.clone());
                let status = answers
                    .iter()
                    .find(|(prefix, _)| line.starts_with(prefix))
                    .map_or("204 No Content", |(_, st)| st);
                let _ = write!(s, "HTTP/1.0 {status}\r\n\r\n");
            }
        });
        (sock, seen)
    }

    fn setup(dir: &Path) -> PathBuf {
        let state = dir.join("state");
        let rec = |id: &str, job| {
            records::record_full(
                &state,
                id,
                &records::Record {
                    owner: "alice".into(),
                    session: false,
                    slurm_job: job,
                },
            )
            .unwrap()
        };
        rec("c1", Some(17));
        rec("c2", Some(17));
        rec("c3", Some(18));
        let p = dir.join("policy.toml");
        std::fs::write(
            &p,
            format!(
                "version = 1\n[runtime]\nlog = \"{}\"\n[proxy]\nstate_dir = \"{}\"\n[slurm]\nstop_timeout = 2\n",
                dir.join("log").display(),
                state.display()
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn the_jobs_containers_go_and_a_rerun_finds_none() {
        let d = tempfile::tempdir().unwrap();
        let policy = setup(d.path());
        let (docker, seen) = fake_docker(
            d.path(),
            vec![("POST /containers/c2/stop", "304 Not Modified")],
        );
        let opts = Options {
            policy,
            docker,
            job: Some(17),
        };
        assert_eq!(run(&opts), 0);
        let mut calls = seen.lock().unwrap().clone();
        calls.sort();
        assert_eq!(
            calls,
            [
                "DELETE /containers/c1?force=1 HTTP/1.0",
                "DELETE /containers/c2?force=1 HTTP/1.0",
                "POST /containers/c1/stop?t=2 HTTP/1.0",
                "POST /containers/c2/stop?t=2 HTTP/1.0",
            ]
        );
        let state = d.path().join("state");
        assert!(records::for_job(&state, 17).unwrap().is_empty());
        assert_eq!(records::for_job(&state, 18).unwrap(), ["c3"]);
        seen.lock().unwrap().clear();
        assert_eq!(run(&opts), 0);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_survivor_drains_the_node_and_keeps_its_record() {
        let d = tempfile::tempdir().unwrap();
        let policy = setup(d.path());
        let (docker, _) = fake_docker(
            d.path(),
            vec![
                ("POST /containers/c1/stop", "404 Not Found"),
                ("DELETE /containers/c2", "500 Internal Server Error"),
                ("GET /containers/c2/json", "200 OK"),
            ],
        );
        let opts = Options {
            policy,
            docker,
            job: Some(17),
        };
        assert_eq!(run(&opts), 1);
        let state = d.path().join("state");
        assert_eq!(records::for_job(&state, 17).unwrap(), ["c2"]);
        let log = std::fs::read_to_string(d.path().join("log")).unwrap_or_default();
        // The log may belong to another test's subscriber (one per process); stderr has it too.
        if !log.is_empty() {
            assert!(log.contains("SURVIVES"), "{log}");
        }
    }

    #[test]
    fn docker_down_with_containers_drains_without_them_does_not() {
        let d = tempfile::tempdir().unwrap();
        let policy = setup(d.path());
        let opts = |job| Options {
            policy: policy.clone(),
            docker: d.path().join("no-docker.sock"),
            job: Some(job),
        };
        assert_eq!(run(&opts(17)), 1);
        assert_eq!(run(&opts(99)), 0);
    }

    #[test]
    fn a_broken_policy_drains() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.toml");
        std::fs::write(&p, "version = 1\n[users.a]\nbogus = 1\n").unwrap();
        let opts = Options {
            policy: p,
            docker: d.path().join("docker.sock"),
            job: Some(1),
        };
        assert_eq!(run(&opts), 1);
    }
}
