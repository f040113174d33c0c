//! Which Slurm job a process runs in, from the kernel: `/proc/<pid>/cgroup`.
//!
//! slurmd puts every process of a job step in the step's cgroup, which only root can
//! change. On cgroup v1 (task/cgroup, proctrack/cgroup) that is
//! `/slurm[_<node>]/uid_<U>/job_<N>/step_<S>[/task_<T>]` in each hierarchy it uses; on v2
//! `/system.slice/slurmstepd.scope/job_<N>/step_<S>/…`. Steps are numbers, `batch`,
//! `extern` or `interactive`. The paths are anchored at the hierarchy's root: a subtree
//! delegated to a user (systemd's user@.service) cannot pass for one.

use std::path::Path;

use super::JobId;

/// What a caller's cgroups say about its Slurm job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupJob {
    /// Not in any job step (a login shell, a plain `salloc` shell, a cron job).
    Outside,
    Job(JobId),
    /// The cgroups could not be read or do not agree; the reason, for the refusal.
    Unknown(String),
}

/// The job of process `pid` (from SO_PEERCRED, whose uid is `uid`), read under `proc_root`.
/// Read as soon as the connection is accepted, before the pid could be reused.
pub fn job_of(proc_root: &Path, pid: Option<i32>, uid: u32) -> CgroupJob {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return CgroupJob::Unknown("the kernel gave no process id for the connection".into());
    };
    let path = proc_root.join(pid.to_string()).join("cgroup");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, uid),
        Err(e) => CgroupJob::Unknown(format!("cannot read {}: {e}", path.display())),
    }
}

/// The job named by a `/proc/<pid>/cgroup` text. Every hierarchy that places the process in
/// a job must name the same job, for `uid` (v1 paths carry it).
pub fn parse(text: &str, uid: u32) -> CgroupJob {
    let mut found: Option<JobId> = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        // hierarchy-id:controllers:path; the path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return CgroupJob::Unknown(format!("malformed cgroup line {line:?}"));
        };
        let step = if controllers.is_empty() {
            v2_job(path)
        } else {
            match v1_job(path) {
                Some((path_uid, _)) if path_uid != uid => {
                    return CgroupJob::Unknown(format!(
                        "its cgroup {path} belongs to uid {path_uid}, not to the caller's uid {uid}"
                    ))
                }
                other => other.map(|(_, job)| job),
            }
        };
        match (step, found) {
            (Some(job), Some(seen)) if job != seen => {
                return CgroupJob::Unknown(format!(
                    "its cgroups name two Slurm jobs, {seen} and {job}"
                ))
            }
            (Some(job), _) => found = Some(job),
            (None, _) => {}
        }
    }
    found.map_or(CgroupJob::Outside, CgroupJob::Job)
}

/// `/slurm[_<node>]/uid_<U>/job_<N>/step_<S>[/…]` → (U, N).
fn v1_job(path: &str) -> Option<(u32, JobId)> {
    let mut c = path.strip_prefix('/')?.split('/');
    let root = c.next()?;
    if root != "slurm" && !root.starts_with("slurm_") {
        return None;
    }
    let uid = number(c.next()?.strip_prefix("uid_")?)?;
    let job = number(c.next()?.strip_prefix("job_")?)?;
    valid_step(c.next()?).then_some((uid, job))
}

/// `/system.slice/slurmstepd.scope/job_<N>/step_<S>[/…]` → N.
fn v2_job(path: &str) -> Option<JobId> {
    let mut c = path
        .strip_prefix("/system.slice/slurmstepd.scope/")?
        .split('/');
    let job = number(c.next()?.strip_prefix("job_")?)?;
    valid_step(c.next()?).then_some(job)
}

fn valid_step(component: &str) -> bool {
    match component.strip_prefix("step_") {
        Some(s) => matches!(s, "batch" | "extern" | "interactive") || number(s).is_some(),
        None => false,
    }
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As read from a job step's process on Debian 12 (Slurm 22.05, cgroup v1).
    const V1_STEP: &str =
        "9:name=systemd:/\n8:pids:/\n6:freezer:/slurm_vm/uid_1001/job_17/step_0\n\
        5:devices:/slurm_vm/uid_1001/job_17/step_0/task_0\n4:memory:/\n0::/\n";

    #[test]
    fn v1_and_v2_job_steps() {
        assert_eq!(parse(V1_STEP, 1001), CgroupJob::Job(17));
        let v2 = "0::/system.slice/slurmstepd.scope/job_42/step_batch/user/task_0\n";
        assert_eq!(parse(v2, 1001), CgroupJob::Job(42));
        for step in ["extern", "interactive", "3"] {
            let line = format!("4:freezer:/slurm/uid_5/job_9/step_{step}\n");
            assert_eq!(parse(&line, 5), CgroupJob::Job(9), "{step}");
        }
    }

    #[test]
    fn outside_a_step_is_outside() {
        assert_eq!(
            parse("9:name=systemd:/user.slice\n0::/\n", 1001),
            CgroupJob::Outside
        );
        // slurmstepd's own cgroup, or a job without a step: no step, no job.
        assert_eq!(
            parse("6:freezer:/slurm_vm/uid_1001/job_17\n", 1001),
            CgroupJob::Outside
        );
        assert_eq!(
            parse("0::/system.slice/slurmstepd.scope/job_3\n", 1001),
            CgroupJob::Outside
        );
        assert_eq!(
            parse("6:freezer:/slurm_vm/uid_1001/job_17/step_x\n", 1001),
            CgroupJob::Outside
        );
    }

    #[test]
    fn a_delegated_subtree_does_not_pass_for_a_job() {
        let forged = "1:name=systemd:/user.slice/user-1001.slice/user@1001.service/slurm_vm/uid_1001/job_5/step_0\n\
            0::/user.slice/user-1001.slice/user@1001.service/system.slice/slurmstepd.scope/job_5/step_0\n";
        assert_eq!(parse(forged, 1001), CgroupJob::Outside);
    }

    #[test]
    fn disagreeing_or_foreign_cgroups_are_unknown() {
        let two = "6:freezer:/slurm/uid_1/job_1/step_0\n5:devices:/slurm/uid_1/job_2/step_0\n";
        assert!(matches!(parse(two, 1), CgroupJob::Unknown(m) if m.contains("two Slurm jobs")));
        assert!(matches!(
            parse(V1_STEP, 1002),
            CgroupJob::Unknown(m) if m.contains("uid 1001, not to the caller's uid 1002")
        ));
        assert!(matches!(parse("garbage\n", 1), CgroupJob::Unknown(_)));
    }

    #[test]
    fn job_of_reads_proc() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("77")).unwrap();
        std::fs::write(d.path().join("77/cgroup"), V1_STEP).unwrap();
        assert_eq!(job_of(d.path(), Some(77), 1001), CgroupJob::Job(17));
        assert!(matches!(
            job_of(d.path(), Some(78), 1001),
            CgroupJob::Unknown(_)
        ));
        assert!(matches!(
            job_of(d.path(), None, 1001),
            CgroupJob::Unknown(_)
        ));
    }
}
