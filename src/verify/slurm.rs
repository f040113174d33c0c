//! The Slurm job of a `gpus = "slurm"` user's container, as `slurm::grant` checks it at
//! create: the job the proxy recorded must still run, be the owner's, and hold exactly the
//! GPUs the container can reach on this node. A container whose job ended (its epilog
//! failed, or was never installed) is an orphan holding GPUs Slurm gives to others.

use super::container::{Ctx, Subject};
use super::{finding, ContainerAudit, Kind};
use crate::policy::{OutsideJob, UserPolicy};
use crate::records;
use crate::slurm::grant::{gres_conf, job_minors, node_name, user_uid};

/// The GPUs the container's job holds on this node (none when the job is gone or someone
/// else's, with a finding saying so).
pub fn granted(
    ctx: &Ctx,
    s: &Subject,
    owner: &str,
    user: &UserPolicy,
    a: &mut ContainerAudit,
) -> Vec<u32> {
    let slurm = ctx.policy.slurm_or_default();
    let recorded = ctx.policy.proxy.as_ref().and_then(|p| {
        records::recorded(p.state_dir.as_path(), &s.id)
            .ok()
            .flatten()
    });
    let Some(id) = recorded.and_then(|r| r.slurm_job) else {
        if slurm.outside_job == OutsideJob::Deny {
            a.findings.push(finding(
                Kind::Slurm,
                "was made outside any Slurm job, which [slurm] outside_job = \"deny\" refuses"
                    .into(),
            ));
        }
        return Vec::new();
    };
    let job = match ctx.jobs.show(id) {
        Ok(Some(job)) => job,
        Ok(None) => {
            a.findings.push(finding(
                Kind::Slurm,
                format!("its Slurm job {id} is over (Slurm no longer knows it)"),
            ));
            return Vec::new();
        }
        Err(e) => {
            a.findings.push(finding(Kind::Unreadable, e.to_string()));
            return Vec::new();
        }
    };
    if !job.running() {
        a.findings.push(finding(
            Kind::Slurm,
            format!("its Slurm job {id} is {}, not running", job.state),
        ));
        return Vec::new();
    }
    match user_uid(owner, user) {
        Ok(uid) if uid == job.uid => {}
        Ok(uid) => {
            a.findings.push(finding(
                Kind::Slurm,
                format!(
                    "its Slurm job {id} belongs to uid {}, not to its owner {owner} (uid {uid})",
                    job.uid
                ),
            ));
            return Vec::new();
        }
        Err(e) => {
            a.findings.push(finding(Kind::Slurm, e.to_string()));
            return Vec::new();
        }
    }
    match node_name(&slurm).and_then(|node| job_minors(&job, &node, &gres_conf(&slurm))) {
        Ok(minors) => minors,
        Err(e) => {
            a.findings.push(finding(Kind::Unreadable, e.to_string()));
            Vec::new()
        }
    }
}

/// After the device checks: GPUs of the job's allocation the container cannot reach (those
/// it reaches beyond it are `devices`' findings).
pub fn missing_gpus(a: &mut ContainerAudit) {
    let missing: Vec<String> = a
        .granted_gpus
        .iter()
        .filter(|g| !a.reachable_gpus.contains(g))
        .map(u32::to_string)
        .collect();
    if !missing.is_empty() {
        a.findings.push(finding(
            Kind::Slurm,
            format!(
                "cannot reach GPU {} of its Slurm job's allocation on this node",
                missing.join(", ")
            ),
        ));
    }
}
