//! Images and builds: shared; the classic builder's query options are checked, and a commit
//! needs the caller to own the container.

use hyper::{Request, Response};

use super::body::{with_uri, Body};
use super::error::{ProxyError, RuleError};
use super::request::{query_pairs, query_param, set_query_param, UserCtx};
use super::server::Call;
use super::upstream::{forward, owned_container};

/// `POST /build`.
pub async fn build(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    check_build(call.query.as_deref(), call.ctx)?;
    forward(call.state, req).await
}

/// `POST /commit?container=X`: X must be the caller's, and is sent on by full id.
pub async fn commit(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let query = call.query.as_deref();
    let name_or_id =
        query_param(query, "container").ok_or(ProxyError::MissingParam("container"))?;
    let full_id = owned_container(call.state, call.ctx, &name_or_id).await?;
    let q = set_query_param(query, "container", &full_id);
    forward(call.state, with_uri(req, &call.path, Some(&q))?).await
}

/// `POST /build`: the classic builder's containers use the daemon's default runtime, not
/// labgpu, so the query options that reach the host are checked here.
pub fn check_build(query: Option<&str>, ctx: &UserCtx) -> Result<(), RuleError> {
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "cgroupparent" if !v.is_empty() => {
                return Err(RuleError::CgroupParent {
                    field: "cgroupparent",
                    value: v,
                })
            }
            "networkmode" if v == "host" && !ctx.allow_host_network => {
                return Err(RuleError::HostNamespace {
                    field: "networkmode",
                    value: v,
                    user: ctx.name.clone(),
                    key: "allow_host_network",
                    section: ctx.section(),
                })
            }
            // dockerd clones git contexts as root: over ssh that is root's keys.
            // "client-session" is BuildKit reading the context from the caller's session.
            "remote"
                if !v.is_empty()
                    && v != "client-session"
                    && !["http://", "https://", "git://", "github.com/"]
                        .iter()
                        .any(|p| v.starts_with(p)) =>
            {
                return Err(RuleError::BuildRemote(v))
            }
            "networkmode" if v.starts_with("container:") => {
                return Err(RuleError::NotAllowed {
                    method: "POST".into(),
                    path: format!("/build?networkmode={v}"),
                })
            }
            _ => {}
        }
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
            Some("t=x&networkmode=default&dockerfile=Dockerfile"),
            &ctx(),
        )
        .unwrap();
        assert!(check_build(Some("cgroupparent=%2Fsystem.slice"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=host"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=container%3Aabc"), &ctx()).is_err());
        check_build(Some("remote=https%3A%2F%2Fgithub.com%2Fa%2Fb.git"), &ctx()).unwrap();
        check_build(Some("remote=github.com%2Fa%2Fb"), &ctx()).unwrap();
        check_build(Some("remote=client-session&version=2"), &ctx()).unwrap();
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
