//! Images and builds. Everyone can list, inspect, pull, push and run every image; a name
//! changes only by its owner's hand: `tag`, `build -t`, `commit`, `import` and `load` may
//! create or move names only under the caller's prefix (`names`), and `rmi`/`image prune`
//! may remove only such names (removing a shared name would free it for squatting). Who
//! produced an image is never read from its labels: pulled and loaded images carry any
//! labels their author chose.

mod build;
pub mod load;
pub mod names;

pub use build::{build, check_build};
pub use load::LoadError;
pub use names::{is_under, prefixes};

use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::body::{with_uri, Body};
use super::error::{ProxyError, RuleError};
use super::request::{query_pairs, query_param, set_query_param};
use super::server::{Call, State};
use super::upstream::{forward, get_json, owned_container};

/// What a request on `/images/…` does, by the name it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRoute {
    /// `POST /images/{name}/tag?repo=R&tag=T`.
    Tag { name: String },
    /// `DELETE /images/{name}`.
    Remove { name: String },
    /// `POST /images/prune`.
    Prune,
    /// `POST /images/create`: a pull (`fromImage`) or an import (`fromSrc`).
    Create,
    /// `POST /images/load`.
    Load,
}

/// The sentence for a name outside the caller's prefix.
pub fn name_refused(name: &str, prefixes: &[String]) -> RuleError {
    RuleError::ValueRefused {
        field: "image name".into(),
        value: name.to_string(),
        reason: format!(
            "users may name images only under their own prefix ({}, [proxy] image_prefix); \
             other names change only by a pull or by the administrator",
            prefixes.join(" or ")
        ),
    }
}

pub async fn handle(
    call: &Call<'_>,
    route: ImageRoute,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let prefixes = &call.ctx.image_prefixes;
    let query = call.query.as_deref();
    match route {
        ImageRoute::Tag { .. } => {
            let repo = query_param(query, "repo").unwrap_or_default();
            if !names::is_under(&repo, prefixes) {
                return Err(name_refused(&repo, prefixes).into());
            }
            forward(call.state, req).await
        }
        ImageRoute::Remove { name } => {
            check_remove(call.state, &name, prefixes).await?;
            forward(call.state, req).await
        }
        ImageRoute::Prune => {
            check_prune(query)?;
            forward(call.state, req).await
        }
        ImageRoute::Create => {
            check_create(query, prefixes)?;
            check_changes(query, &call.ctx.owner_label)?;
            forward(call.state, req).await
        }
        ImageRoute::Load => {
            let (mut parts, body) = req.into_parts();
            // Another length than the caller's when a gzip upload is decompressed.
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            parts.headers.remove(hyper::header::TRANSFER_ENCODING);
            let (body, refusal) = load::inspect_load(body, prefixes.clone());
            let resp = forward(call.state, Request::from_parts(parts, body)).await;
            match refusal.take() {
                Some(e) => Err(ProxyError::Load(e)),
                None => resp,
            }
        }
    }
}

/// `POST /commit?container=X&repo=R`: X must be the caller's (sent on by full id), and R, if
/// given, under the caller's prefix.
pub async fn commit(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let query = call.query.as_deref();
    let name_or_id =
        query_param(query, "container").ok_or(ProxyError::MissingParam("container"))?;
    let full_id = owned_container(call.state, call.ctx, &name_or_id).await?;
    let repo = query_param(query, "repo").unwrap_or_default();
    if !repo.is_empty() && !names::is_under(&repo, &call.ctx.image_prefixes) {
        return Err(name_refused(&repo, &call.ctx.image_prefixes).into());
    }
    check_changes(query, &call.ctx.owner_label)?;
    let q = set_query_param(query, "container", &full_id);
    forward(call.state, with_uri(req, &call.path, Some(&q))?).await
}

/// `changes` (`commit --change`, `import --change`): Dockerfile instructions applied to the
/// image; a `LABEL` naming the owner label is refused (it would ride along into every
/// container made from the image, build steps included).
pub fn check_changes(query: Option<&str>, owner_label: &str) -> Result<(), RuleError> {
    for (k, v) in query_pairs(query) {
        if k == "changes"
            && v.to_ascii_lowercase()
                .contains(&owner_label.to_ascii_lowercase())
        {
            return Err(RuleError::ValueRefused {
                field: "image change".into(),
                value: v,
                reason: "the owner label is the proxy's to set".into(),
            });
        }
    }
    Ok(())
}

/// `POST /images/create`: a pull (`fromImage`: registry content, any name) or an import
/// from the request body (`fromSrc=-`) named under the caller's prefix. An import from a
/// URL would have dockerd fetch it from the host's network: refused.
pub fn check_create(query: Option<&str>, prefixes: &[String]) -> Result<(), RuleError> {
    const KNOWN: [&str; 7] = [
        "fromImage",
        "fromSrc",
        "repo",
        "tag",
        "message",
        "changes",
        "platform",
    ];
    let pairs = query_pairs(query);
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        return Err(RuleError::UnknownField {
            field: format!("image create option {k}"),
        });
    }
    let get = |k: &str| query_param(query, k).unwrap_or_default();
    let (image, src, repo) = (get("fromImage"), get("fromSrc"), get("repo"));
    match (image.is_empty(), src.as_str()) {
        (false, "") => Ok(()),
        (false, _) => Err(RuleError::ValueRefused {
            field: "image create".into(),
            value: format!("fromImage={image}&fromSrc={src}"),
            reason: "a pull and an import at once".into(),
        }),
        (true, "-") if repo.is_empty() || names::is_under(&repo, prefixes) => Ok(()),
        (true, "-") => Err(name_refused(&repo, prefixes)),
        (true, other) => Err(RuleError::ValueRefused {
            field: "docker import source".into(),
            value: other.to_string(),
            reason:
                "dockerd would fetch it from the host's network; download it and import the file"
                    .into(),
        }),
    }
}

/// `POST /images/prune`: dangling images only (they have no name to free); `dangling=false`
/// would remove every unused image, shared names included.
pub fn check_prune(query: Option<&str>) -> Result<(), RuleError> {
    let Some(filters) = query_param(query, "filters") else {
        return Ok(());
    };
    let v: Value = serde_json::from_str(&filters)
        .map_err(|e| RuleError::BadFilters(format!("{filters:?}: {e}")))?;
    let dangling = v.get("dangling").map(|d| match d {
        Value::Object(m) => m.keys().cloned().collect::<Vec<_>>(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec!["?".into()],
    });
    match dangling {
        Some(values) if values.iter().any(|d| !matches!(d.as_str(), "true" | "1")) => {
            Err(RuleError::ValueRefused {
                field: "image prune filter dangling".into(),
                value: values.join(","),
                reason:
                    "users prune only dangling images (removing names would free them for anyone)"
                        .into(),
            })
        }
        _ => Ok(()),
    }
}

/// `DELETE /images/{name}`: a name is removed only under the caller's prefix; an image id
/// removes every name the image has, so all of them must be.
async fn check_remove(state: &State, name: &str, prefixes: &[String]) -> Result<(), ProxyError> {
    let (status, image) = get_json(state, &format!("/images/{name}/json")).await?;
    if status == StatusCode::NOT_FOUND {
        // Docker says so itself; nothing is removed.
        return Ok(());
    }
    // dockerd's own test (isImageIDPrefix): a name the image id starts with is an id.
    let id = image.get("Id").and_then(Value::as_str).unwrap_or_default();
    let by_id =
        !name.is_empty() && (id.starts_with(name) || id.starts_with(&format!("sha256:{name}")));
    if !by_id {
        return if names::is_under(name, prefixes) {
            Ok(())
        } else {
            Err(name_refused(name, prefixes).into())
        };
    }
    let tags = image
        .get("RepoTags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for tag in tags {
        if !names::is_under(tag, prefixes) {
            return Err(name_refused(tag, prefixes).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Vec<String> {
        prefixes("{user}/", "alice")
    }

    #[test]
    fn imports_are_named_under_the_prefix_and_come_from_the_body() {
        check_create(Some("fromImage=ubuntu&tag=22.04"), &p()).unwrap();
        check_create(Some("fromSrc=-&repo=alice%2Fimp&tag=1"), &p()).unwrap();
        check_create(Some("fromSrc=-"), &p()).unwrap();
        for bad in [
            "fromSrc=-&repo=ubuntu",
            "fromSrc=http%3A%2F%2F10.0.0.1%2Fx.tar&repo=alice%2Fx",
            "fromImage=ubuntu&fromSrc=-",
            "fromSrc=-&repo=alice%2Fx&bogus=1",
        ] {
            assert!(check_create(Some(bad), &p()).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_is_dangling_only() {
        check_prune(None).unwrap();
        check_prune(Some("filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D")).unwrap();
        check_prune(Some("filters=%7B%22until%22%3A%5B%2224h%22%5D%7D")).unwrap();
        assert!(check_prune(Some("filters=%7B%22dangling%22%3A%5B%22false%22%5D%7D")).is_err());
        assert!(check_prune(Some(
            "filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"
        ))
        .is_err());
    }
}
