//! Whose the container is: the owner labgpu stamped must still be in the policy, and with
//! the proxy in use it must be the owner the proxy recorded (a label on a container the proxy
//! did not create, or a stamp that disagrees with the record, is someone's claim, not a fact).

use super::container::{Ctx, Subject};
use super::{finding, ContainerAudit, Kind};
use crate::owner::find_owner;
use crate::policy::UserPolicy;
use crate::records;

/// The policy user the container's stamped owner is, if any; findings for drift and
/// provenance go to `a`.
pub fn check<'p>(ctx: &Ctx<'p>, s: &Subject, a: &mut ContainerAudit) -> Option<&'p UserPolicy> {
    let user = match s.stamped_owner() {
        Some(o) => match ctx.policy.user(o) {
            Some(u) => Some(u),
            None => {
                a.findings.push(finding(
                    Kind::Drift,
                    format!("owner {o:?} is no longer in the policy"),
                ));
                None
            }
        },
        None => None,
    };
    if let Some(detail) = provenance(ctx, s) {
        a.findings.push(finding(Kind::Owner, detail));
    }
    user
}

/// With `[proxy]`: the owner the container claims (labgpu's stamp, else its Docker label)
/// against the proxy's record.
fn provenance(ctx: &Ctx, s: &Subject) -> Option<String> {
    let proxy = ctx.policy.proxy.as_ref()?;
    let claimed = match s.stamped_owner() {
        Some(o) => Some(o.to_string()),
        None => find_owner(
            &serde_json::Value::Null,
            &s.id,
            &ctx.policy.runtime.owner_label,
            ctx.docker_root,
        )
        .ok()
        .flatten(),
    }?;
    match records::recorded_owner(proxy.state_dir.as_path(), &s.id) {
        Ok(Some(recorded)) if recorded == claimed => None,
        Ok(Some(recorded)) => Some(format!(
            "owner {claimed:?} differs from {recorded:?}, whom the labgpu proxy created it for"
        )),
        Ok(None) => Some(format!(
            "claims owner {claimed:?} but was not created through the labgpu proxy"
        )),
        Err(e) => Some(format!("the proxy's record cannot be read: {e}")),
    }
}
