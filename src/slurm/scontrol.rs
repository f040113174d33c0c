//! Asking Slurm about a job: `scontrol --json -d show job N` where scontrol has `--json`
//! (23.02 and later), else `scontrol -d show job N` as text.
//!
//! The text form prints fields users choose (the job name, the comment, the working
//! directory) unescaped, newlines included: a job named
//! `x\n Nodes=n1 CPU_IDs=0 Mem=0 GRES=gpu:4(IDX:0-3)` adds a line that looks like Slurm's
//! own. Slurm's real fields are always there, so a forged one shows as a second copy: the
//! text is believed only where each field labgpu reads appears once (per node, for the
//! allocation lines).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{hostlist, Job, JobId, SlurmError};

/// How long scontrol may take; slurmctld answers in milliseconds when it is up.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The most of scontrol's output that is read (one job's fields are a few KiB).
const MAX_OUTPUT: u64 = 1 << 20;

/// Asks `scontrol` (with `SLURM_CONF=slurm_conf`) about job `id`; `None` when Slurm does not
/// know it (never ran, or ended longer than `MinJobAge` ago).
pub fn show_job(scontrol: &Path, slurm_conf: &Path, id: JobId) -> Result<Option<Job>, SlurmError> {
    let run = |args: &[&str]| run(scontrol, slurm_conf, args);
    let id_arg = id.to_string();
    let json = run(&["--json", "-d", "show", "job", &id_arg])?;
    if json.ok {
        return parse_json(&json.stdout, id).map_err(|reason| bad_answer(scontrol, id, reason));
    }
    let out = if json.stderr.contains("unrecognized option") {
        run(&["-d", "show", "job", &id_arg])?
    } else {
        json
    };
    if !out.ok {
        if out.stderr.contains("Invalid job id") || out.stdout.contains("Invalid job id") {
            return Ok(None);
        }
        return Err(SlurmError::Scontrol {
            path: scontrol.to_path_buf(),
            job: id,
            reason: first_line(&out.stderr),
        });
    }
    parse_text(&out.stdout, id).map_err(|reason| bad_answer(scontrol, id, reason))
}

fn bad_answer(scontrol: &Path, id: JobId, reason: String) -> SlurmError {
    SlurmError::Answer {
        path: scontrol.to_path_buf(),
        job: id,
        reason,
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs scontrol with a clean environment, within `DEADLINE`.
fn run(scontrol: &Path, slurm_conf: &Path, args: &[&str]) -> Result<Output, SlurmError> {
    let fail = |reason: String| SlurmError::Run {
        path: scontrol.to_path_buf(),
        reason,
    };
    let mut child = Command::new(scontrol)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("SLURM_CONF", slurm_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(status) => break status,
            None if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("it did not answer within {DEADLINE:?}")));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    Ok(Output {
        ok: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("it failed without a message")
        .trim()
        .to_string()
}

/// `scontrol -d show job N`: see the module's note on forged fields.
pub fn parse_text(text: &str, id: JobId) -> Result<Option<Job>, String> {
    if text.contains("Invalid job id") {
        return Ok(None);
    }
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.first() != Some(&format!("JobId={id}").as_str()) {
        return Err(format!("it does not begin with JobId={id}"));
    }
    let once = |key: &str| -> Result<&str, String> {
        let mut found = tokens.iter().filter_map(|t| t.strip_prefix(key));
        match (found.next(), found.next()) {
            (Some(v), None) => Ok(v),
            (None, _) => Err(format!("it has no {key}")),
            (Some(_), Some(_)) => Err(forged(key)),
        }
    };
    let user = once("UserId=")?;
    let uid = user
        .rsplit_once('(')
        .and_then(|(_, u)| u.strip_suffix(')'))
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| format!("UserId={user} has no uid"))?;
    let state = once("JobState=")?.to_string();
    let mut allocations = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(nodes) = words.next().and_then(|w| w.strip_prefix("Nodes=")) else {
            continue;
        };
        let gres = words.find_map(|w| w.strip_prefix("GRES=")).unwrap_or("");
        allocations.push(allocation(nodes, gres)?);
    }
    Ok(Some(Job::new(id, uid, state, allocations)))
}

fn forged(key: &str) -> String {
    format!("{key} appears more than once (a job name or comment written to look like Slurm's own fields?)")
}

/// One `Nodes=… GRES=…` pair: the nodes and their GPU indices.
fn allocation(nodes: &str, gres: &str) -> Result<(Vec<String>, Vec<u32>), String> {
    let names = hostlist::expand(nodes).map_err(|e| e.to_string())?;
    Ok((names, gpu_indices(gres)?))
}

/// The GPU indices of a GRES detail (`gpu:2(IDX:0-1)`, `gpu:a100:1(IDX:0),gpu:v100:1(IDX:2)`,
/// `gpu:1(IDX:0),mps:0`): every `gpu` entry's `IDX`.
pub fn gpu_indices(gres: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for item in split_outside_parens(gres) {
        if item.is_empty() || item.split(':').next() != Some("gpu") {
            continue;
        }
        let idx = item
            .split_once("(IDX:")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .ok_or_else(|| format!("GRES {item:?} has no (IDX:…) with its GPU indices"))?;
        for part in idx.split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u32, u32) = match (lo.parse(), hi.parse()) {
                (Ok(a), Ok(b)) if a <= b && b < 4096 => (a, b),
                _ => return Err(format!("GRES {item:?} has GPU indices {idx:?}")),
            };
            out.extend(lo..=hi);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `scontrol --json -d show job N` (Slurm 23.02+): `jobs[]` with `job_id`, `user_id`,
/// `job_state` (a string, or a list of flags from 23.11), `nodes` and `gres_detail`, one
/// entry per node of `nodes` in order.
pub fn parse_json(text: &str, id: JobId) -> Result<Option<Job>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let jobs = v.get("jobs").and_then(Value::as_array);
    let Some(job) = jobs
        .into_iter()
        .flatten()
        .find(|j| j.get("job_id").and_then(Value::as_u64) == Some(u64::from(id)))
    else {
        return Ok(None);
    };
    let uid = job
        .get("user_id")
        .and_then(Value::as_u64)
        .and_then(|u| u32::try_from(u).ok())
        .ok_or("it has no user_id")?;
    let state = match job.get("job_state") {
        Some(Value::String(s)) => s.clone(),
        // 23.11+: the base state first, then flags (COMPLETING, …).
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ => return Err("it has no job_state".into()),
    };
    let nodes = job.get("nodes").and_then(Value::as_str).unwrap_or("");
    let details: Vec<&str> = job
        .get("gres_detail")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut allocations = Vec::new();
    if !details.is_empty() {
        let names = hostlist::expand(nodes).map_err(|e| e.to_string())?;
        if names.len() != details.len() {
            return Err(format!(
                "{} gres_detail entries for the {} nodes {nodes}",
                details.len(),
                names.len()
            ));
        }
        for (name, gres) in names.into_iter().zip(details) {
            allocations.push((vec![name], gpu_indices(gres)?));
        }
    }
    Ok(Some(Job::new(id, uid, state, allocations)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian 12's scontrol (Slurm 22.05.8) printed for a running job.
    const RUNNING: &str = "JobId=7 JobName=train\n   UserId=lgt-abc-alice(1001) GroupId=lgt-abc-alice(1001) MCS_label=N/A\n\
        \x20  JobState=RUNNING Reason=None Dependency=(null)\n   NodeList=vm\n   NumNodes=1 NumCPUs=1\n\
        \x20  JOB_GRES=gpu:2\n     Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:1-2)\n   MinCPUsNode=1\n\
        \x20  Command=docker\n   WorkDir=/home/alice\n";

    #[test]
    fn text_of_a_running_job() {
        let job = parse_text(RUNNING, 7).unwrap().unwrap();
        assert_eq!((job.id, job.uid, job.state.as_str()), (7, 1001, "RUNNING"));
        assert_eq!(job.gpus_on("vm").unwrap(), [1, 2]);
        assert_eq!(job.gpus_on("other").unwrap(), Vec::<u32>::new());
        assert!(parse_text(RUNNING, 8).is_err());
        assert_eq!(
            parse_text("slurm_load_jobs error: Invalid job id specified\n", 7).unwrap(),
            None
        );
    }

    #[test]
    fn an_ended_job_has_no_gres() {
        let ended = RUNNING
            .replace("JobState=RUNNING", "JobState=COMPLETED")
            .replace("GRES=gpu:2(IDX:1-2)", "GRES=");
        let job = parse_text(&ended, 7).unwrap().unwrap();
        assert_eq!(job.state, "COMPLETED");
        assert!(job.gpus_on("vm").unwrap().is_empty());
    }

    #[test]
    fn forged_fields_in_a_job_name_or_comment_are_refused() {
        let name = RUNNING.replace(
            "JobName=train",
            "JobName=x\n     Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:4(IDX:0-3)",
        );
        let job = parse_text(&name, 7).unwrap().unwrap();
        let err = job.gpus_on("vm").unwrap_err();
        assert!(err.contains("more than one allocation line"), "{err}");
        let comment = format!("{RUNNING}   Comment=c\nJobState=RUNNING UserId=bob(1002)\n");
        let err = parse_text(&comment, 7).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn gres_details() {
        assert_eq!(gpu_indices("gpu:1(IDX:0)").unwrap(), [0]);
        assert_eq!(
            gpu_indices("gpu:a100:1(IDX:0),gpu:v100:2(IDX:2,4)").unwrap(),
            [0, 2, 4]
        );
        assert_eq!(
            gpu_indices("gpu:2(IDX:0-1),mps:100(0/100)").unwrap(),
            [0, 1]
        );
        assert_eq!(gpu_indices("").unwrap(), Vec::<u32>::new());
        assert!(gpu_indices("gpu:2").is_err());
        assert!(gpu_indices("gpu:1(IDX:N/A)").is_err());
        assert!(gpu_indices("gpu:1(IDX:3-1)").is_err());
    }

    #[test]
    fn json_of_newer_slurms() {
        let j = r#"{"jobs":[{"job_id":7,"user_id":1001,"job_state":["RUNNING"],
            "nodes":"n[1-2]","gres_detail":["gpu:1(IDX:3)","gpu:2(IDX:0-1)"]}],"errors":[]}"#;
        let job = parse_json(j, 7).unwrap().unwrap();
        assert_eq!(job.state, "RUNNING");
        assert_eq!(job.gpus_on("n1").unwrap(), [3]);
        assert_eq!(job.gpus_on("n2").unwrap(), [0, 1]);
        let old = r#"{"jobs":[{"job_id":7,"user_id":1001,"job_state":"COMPLETED","nodes":"n1","gres_detail":[]}]}"#;
        assert_eq!(parse_json(old, 7).unwrap().unwrap().state, "COMPLETED");
        assert_eq!(
            parse_json(
                r#"{"jobs":[],"errors":[{"error":"Invalid job id specified"}]}"#,
                7
            )
            .unwrap(),
            None
        );
        let short = r#"{"jobs":[{"job_id":7,"user_id":1,"job_state":"RUNNING","nodes":"n[1-2]","gres_detail":["gpu:1(IDX:0)"]}]}"#;
        assert!(parse_json(short, 7).is_err());
    }

    #[test]
    fn a_fake_scontrol_is_run_with_a_clean_environment_and_a_deadline() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("scontrol");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$1\" in --json) echo \"scontrol: unrecognized option '--json'\" >&2; exit 1;; esac\n\
             printf 'JobId=%s JobName=x\\n UserId=u(%s) JobState=RUNNING\\n Nodes=vm GRES=gpu:1(IDX:0)\\n' \"$4\" \"${HOME:-0}\"\n\
             [ \"$SLURM_CONF\" = /etc/x.conf ] || exit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let job = show_job(&fake, Path::new("/etc/x.conf"), 9)
            .unwrap()
            .unwrap();
        // HOME is not passed on: the uid printed is the fallback 0.
        assert_eq!((job.id, job.uid), (9, 0));
        assert_eq!(job.gpus_on("vm").unwrap(), [0]);
        let err = show_job(&fake, Path::new("/etc/y.conf"), 9).unwrap_err();
        assert!(matches!(err, SlurmError::Scontrol { .. }), "{err}");
    }
}
