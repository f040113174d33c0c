//! `docker run` from inside a Slurm job: for a `gpus = "slurm"` user the proxy takes the job
//! from the caller's cgroup (read when the connection was accepted, `slurm::cgroup`), asks
//! Slurm whether it runs and is the caller's, then stamps it as a label and records it with
//! the container. Nobody else may set the label; the runtime and the epilog go by the record.

use serde_json::Value;

use crate::policy::GpuSource;
use crate::proxy::error::{ProxyError, RuleError};
use crate::proxy::request::{as_object_mut, canonicalize};
use crate::proxy::server::Call;
use crate::slurm::{grant, CgroupJob, JobId, SlurmError, JOB_LABEL};

/// The job the new container belongs to: `None` outside a job (where `outside_job` allows
/// that) and for users whose GPUs do not come from Slurm. Refuses a create that names the
/// job label itself.
pub async fn job_for_create(call: &Call<'_>, v: &mut Value) -> Result<Option<JobId>, ProxyError> {
    refuse_job_label(v)?;
    let Some(user) = call.policy.user(&call.ctx.name) else {
        return Ok(None);
    };
    if call.policy.gpu_source(user) != GpuSource::Slurm {
        return Ok(None);
    }
    let job = match &call.job {
        CgroupJob::Job(id) => Some(*id),
        CgroupJob::Outside => None,
        CgroupJob::Unknown(reason) => {
            return Err(SlurmError::CallerJob {
                user: call.ctx.name.clone(),
                reason: reason.clone(),
            }
            .into())
        }
    };
    // scontrol and gres.conf: on the blocking pool (scontrol has its own deadline).
    let (policy, name, uid) = (call.policy.clone(), call.ctx.name.clone(), call.uid);
    tokio::task::spawn_blocking(move || {
        let scontrol = grant::Scontrol::new(&policy.slurm_or_default());
        grant::minors_for(&policy, &scontrol, &name, uid, job)
    })
    .await
    .map_err(|e| ProxyError::Body(e.to_string()))??;
    Ok(job)
}

/// `Labels[JOB_LABEL]` is the proxy's to write, like the owner label.
fn refuse_job_label(v: &mut Value) -> Result<(), RuleError> {
    let Some(top) = as_object_mut(v, "body")? else {
        return Ok(());
    };
    canonicalize(top, &["Labels"])?;
    match top.get("Labels") {
        Some(Value::Object(labels)) if labels.contains_key(JOB_LABEL) => {
            Err(RuleError::ValueRefused {
                field: "label".into(),
                value: JOB_LABEL.into(),
                reason: "the proxy sets it to the Slurm job the container is created from".into(),
            })
        }
        _ => Ok(()),
    }
}

/// Stamps the job on a body the create rules have already rewritten (`Labels` an object).
pub fn stamp_job_label(v: &mut Value, job: Option<JobId>) {
    let Some(job) = job else {
        return;
    };
    if let Some(Value::Object(labels)) = v.get_mut("Labels") {
        labels.insert(JOB_LABEL.into(), Value::String(job.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_label_in_the_request_is_refused_however_spelled() {
        for body in [
            json!({"Image": "x", "Labels": {"labgpu.slurm.job": "12"}}),
            json!({"Image": "x", "labels": {"labgpu.slurm.job": ""}}),
        ] {
            let err = refuse_job_label(&mut body.clone()).unwrap_err();
            assert!(err.to_string().contains("labgpu.slurm.job"), "{err}");
        }
        refuse_job_label(&mut json!({"Image": "x", "Labels": {"other": "1"}})).unwrap();
        refuse_job_label(&mut json!({"Image": "x"})).unwrap();
        assert!(refuse_job_label(&mut json!({"Labels": {}, "labels": {}})).is_err());
    }

    #[test]
    fn the_stamp_goes_next_to_the_owner_label() {
        let mut v = json!({"Labels": {"labgpu.user": "alice"}});
        stamp_job_label(&mut v, Some(17));
        assert_eq!(
            v["Labels"],
            json!({"labgpu.user": "alice", "labgpu.slurm.job": "17"})
        );
        stamp_job_label(&mut v, None);
        assert_eq!(v["Labels"]["labgpu.slurm.job"], "17");
    }
}
