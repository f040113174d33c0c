//! `POST /build` (the classic builder): each `RUN` step is a container with the daemon's
//! default runtime and the build's options as its host config, so the options obey the
//! create rules, and the build runs only where its steps run under labgpu.

use hyper::{Request, Response};

use super::names;
use crate::policy::Unlabeled;
use crate::proxy::body::Body;
use crate::proxy::error::{ProxyError, RuleError};
use crate::proxy::request::{query_pairs, Field, UserCtx};
use crate::proxy::server::Call;
use crate::proxy::upstream::{forward, get_json};

use Field::{Checked, Free, Refused};

/// `POST /build`: the options are checked, and the build must run under labgpu: dockerd's
/// default runtime is the policy's, and the runtime lets unlabeled containers (build steps:
/// the proxy did not create them, so their labels count for nothing) run without GPUs.
pub async fn build(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    check_build(call.query.as_deref(), call.ctx)?;
    if call.policy.runtime.unlabeled != Unlabeled::NoGpu {
        return Err(ProxyError::BuildsNeedNoGpu {
            policy: call.policy.path.clone(),
        });
    }
    let (status, info) = get_json(call.state, "/info").await?;
    let default = info
        .get("DefaultRuntime")
        .and_then(|r| r.as_str())
        .unwrap_or("");
    if !status.is_success() || default != call.ctx.runtime {
        return Err(ProxyError::BuildsNeedDefaultRuntime {
            default: default.to_string(),
            runtime: call.ctx.runtime.clone(),
        });
    }
    forward(call.state, req).await
}

/// `POST /build` query parameters (API 1.24 to 1.51). The classic builder runs each `RUN`
/// step as a container with the daemon's default runtime and these options as its host
/// config, so they obey the create rules; BuildKit (`version=2`) runs steps with runc
/// directly, outside labgpu, and is refused until builds through BuildKit are checked.
const BUILD_QUERY: &[(&str, Field)] = &[
    ("dockerfile", Free),
    ("t", Checked),
    ("extrahosts", Free),
    ("remote", Checked),
    ("q", Free),
    ("nocache", Free),
    ("cachefrom", Free),
    ("pull", Free),
    ("rm", Free),
    ("forcerm", Free),
    ("memory", Free),
    ("memswap", Free),
    ("cpushares", Free),
    ("cpusetcpus", Free),
    ("cpusetmems", Free),
    ("cpuperiod", Free),
    ("cpuquota", Free),
    ("buildargs", Free),
    ("shmsize", Free),
    ("squash", Free),
    ("labels", Checked),
    ("networkmode", Checked),
    ("platform", Free),
    ("target", Free),
    ("ulimits", Free),
    ("session", Free),
    ("buildid", Free),
    ("version", Checked),
    ("isolation", Checked),
    ("outputs", Refused("outputs are BuildKit's")),
    (
        "cgroupparent",
        Refused("only the administrator places containers in cgroups"),
    ),
    (
        "securityopt",
        Refused("build steps run with the create rules' security options only"),
    ),
];

/// Checks a build's query string against `BUILD_QUERY` and the caller's policy.
pub fn check_build(query: Option<&str>, ctx: &UserCtx) -> Result<(), RuleError> {
    let pairs = query_pairs(query);
    // Said first: a BuildKit client's other options would only confuse the refusal.
    if pairs.iter().any(|(k, v)| k == "version" && v == "2") {
        return Err(RuleError::BuildKit);
    }
    for (k, v) in pairs {
        let rule = BUILD_QUERY.iter().find(|(n, _)| *n == k).map(|(_, r)| *r);
        let field = || format!("build option {k}");
        match rule {
            None => return Err(RuleError::UnknownField { field: field() }),
            // Only the empty value: dockerd reads `cgroupparent=false` as a path.
            Some(Field::Refused(reason)) if !v.is_empty() => {
                return Err(RuleError::FieldRefused {
                    field: field(),
                    reason,
                })
            }
            Some(Field::Checked) => check_build_value(&k, &v, ctx)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_build_value(k: &str, v: &str, ctx: &UserCtx) -> Result<(), RuleError> {
    let refused = |reason: &str| RuleError::ValueRefused {
        field: format!("build option {k}"),
        value: v.to_string(),
        reason: reason.to_string(),
    };
    match k {
        "networkmode" if v == "host" && !ctx.allow_host_network => Err(RuleError::HostNamespace {
            field: "networkmode",
            value: v.to_string(),
            user: ctx.name.clone(),
            key: "allow_host_network",
            section: ctx.section(),
        }),
        "networkmode" if v.starts_with("container:") => Err(refused(
            "build steps cannot join another container's network",
        )),
        // dockerd fetches a remote context itself, as root from the host's network: a git
        // clone uses root's ssh keys and git credentials, a URL reaches whatever the host
        // reaches. Users send the context (clone or download it first).
        "remote" if !v.is_empty() => Err(RuleError::BuildRemote(v.to_string())),
        "labels" => check_no_owner_label(v, &ctx.owner_label),
        "t" if !names::is_under(v, &ctx.image_prefixes) => {
            Err(super::name_refused(v, &ctx.image_prefixes))
        }
        "version" if v == "2" => Err(RuleError::BuildKit),
        "version" if !matches!(v, "" | "1") => {
            Err(refused("only the classic builder (1) is known"))
        }
        "isolation" if !matches!(v, "" | "default") => Err(refused("it is for Windows containers")),
        _ => Ok(()),
    }
}

/// Build `labels` (a JSON map) must not name an owner: a container the proxy did not create
/// has none, whatever its image says, but the label would still show in listings.
fn check_no_owner_label(labels: &str, key: &str) -> Result<(), RuleError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(labels).map_err(|e| RuleError::BadJson(e.to_string()))?;
    if map.keys().any(|k| k == key) {
        return Err(RuleError::ValueRefused {
            field: "build option labels".into(),
            value: key.to_string(),
            reason: "the owner label is the proxy's to set".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::test_ctx as ctx;

    #[test]
    fn build_query_is_checked() {
        check_build(
            Some("t=alice%2Fx&networkmode=default&dockerfile=Dockerfile"),
            &ctx(),
        )
        .unwrap();
        assert!(check_build(Some("cgroupparent=%2Fsystem.slice"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=host"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=container%3Aabc"), &ctx()).is_err());
        for remote in [
            "https%3A%2F%2Fgithub.com%2Fa%2Fb.git",
            "github.com%2Fa%2Fb",
            "http%3A%2F%2F169.254.169.254%2F",
        ] {
            assert!(check_build(Some(&format!("remote={remote}")), &ctx()).is_err());
        }
        assert!(check_build(Some("cgroupparent=false"), &ctx()).is_err());
        assert!(check_build(Some("labels=%7B%22labgpu.user%22%3A%22bob%22%7D"), &ctx()).is_err());
        check_build(Some("labels=%7B%22team%22%3A%22x%22%7D"), &ctx()).unwrap();
        assert!(matches!(
            check_build(Some("remote=client-session&version=2"), &ctx()),
            Err(RuleError::BuildKit)
        ));
        for bad in [
            "cgroupparent=%2Fsystem.slice",
            "securityopt=seccomp%3Dunconfined",
            "bogus=1",
            "isolation=hyperv",
            "outputs=type%3Dlocal",
            "t=alice%2Fx&t=team%2Fpytorch",
            "t=ubuntu%3A22.04",
        ] {
            assert!(check_build(Some(bad), &ctx()).is_err(), "{bad}");
        }
        check_build(
            Some("t=alice%2Fa&t=alice%2Fb&buildargs=%7B%7D&shmsize=1000&ulimits=%5B%5D&version=1&cgroupparent="),
            &ctx(),
        )
        .unwrap();
        for bad in ["git%40github.com%3Aa%2Fb.git", "ssh%3A%2F%2Fhost%2Frepo"] {
            assert!(
                matches!(
                    check_build(Some(&format!("remote={bad}")), &ctx()),
                    Err(RuleError::BuildRemote(_))
                ),
                "{bad}"
            );
        }
    }
}
