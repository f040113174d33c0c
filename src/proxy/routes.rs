//! The endpoint allowlist: which Docker API paths a policy user may call, and which resource's
//! rules handle each. Anything not in `classify`'s table is refused.

use hyper::Method;

use super::error::RuleError;
use super::images::ImageRoute;
use super::networks::NetworkRoute;
use super::system::Listing;
use super::volumes::VolumeRoute;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Shared resources (images, networks, volumes, builds, version, ping): forward as is.
    Forward,
    /// `POST /containers/create`: check and rewrite the body.
    Create,
    /// `GET /containers/json`, `GET /events`, `POST /containers/prune`: only the caller's.
    Listing(Listing),
    /// `GET /system/df`: forward, then drop other owners' containers from the answer.
    DiskUsage,
    /// `/containers/{id}/…`: the caller must own `id`; `rest` is what follows it.
    Container {
        id: String,
        rest: String,
    },
    /// `/exec/{id}/…`: the caller must own the exec's container.
    Exec {
        id: String,
    },
    /// `POST /commit?container=X`: the caller must own X.
    Commit,
    /// `POST /build`: forward after checking the query (cgroup parent, network mode).
    Build,
    /// `POST /session`: a BuildKit client's session, claimed for the caller.
    BuildKitSession,
    /// `POST /grpc`: BuildKit's control API, each call checked.
    BuildKit,
    /// Requests that create, move or remove image names.
    Images(ImageRoute),
    Volumes(VolumeRoute),
    Networks(NetworkRoute),
    /// `GET /labgpu/top`: labgpu's own, read-only: the caller's part of `labgpu top`.
    Top,
    /// `POST /labgpu/session`: labgpu's own, the caller's login container (`session`).
    Session,
}

/// The path without its `/v1.41` version prefix.
pub fn strip_version(path: &str) -> &str {
    match split_version(path) {
        Some((_, rest)) => rest,
        None => path,
    }
}

fn split_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = !version.is_empty()
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        && version.starts_with(|c: char| c.is_ascii_digit());
    is_version.then(|| (version, &rest[end..]))
}

/// Before API 1.24, `POST /containers/{id}/start` took a body whose host config replaced
/// the container's (runtime, privileged, binds and all), after every check here was done at
/// create. Users get the API as Docker CLIs since 1.12 (2016) speak it.
fn check_version(path: &str) -> Result<(), RuleError> {
    let Some((version, _)) = split_version(path) else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) < (1, 24) {
        return Err(RuleError::OldApi(version.to_string()));
    }
    Ok(())
}

/// Docker's router matches decoded paths; refusing anything that could decode or clean to a
/// different path keeps what is checked here the path Docker acts on.
fn check_path_shape(path: &str) -> Result<Vec<&str>, RuleError> {
    let bad = || RuleError::BadPath(path.to_string());
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if path.contains(['%', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(bad());
    }
    Ok(segments)
}

/// Classifies a non-admin request. `path` is the request path with its version prefix.
pub fn classify(method: &Method, path: &str) -> Result<Route, RuleError> {
    check_version(path)?;
    let path = strip_version(path);
    let segs = check_path_shape(path)?;
    let not_allowed = || RuleError::NotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    };
    let admin = |what: &str, why: &'static str| RuleError::AdminOnly {
        what: what.to_string(),
        why,
    };
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match segs.as_slice() {
        ["_ping"] | ["version"] | ["info"] if get => Ok(Route::Forward),
        ["containers", "json"] if get => Ok(Route::Listing(Listing::Containers)),
        ["containers", "create"] if post => Ok(Route::Create),
        ["containers", "prune"] if post => Ok(Route::Listing(Listing::Prune)),
        ["containers", id, rest @ ..] => Ok(Route::Container {
            id: id.to_string(),
            rest: rest.join("/"),
        }),
        ["exec", id, ..] => Ok(Route::Exec { id: id.to_string() }),
        ["commit"] if post => Ok(Route::Commit),
        ["labgpu", "session"] if post => Ok(Route::Session),
        ["events"] if get => Ok(Route::Listing(Listing::Events)),
        ["system", "df"] if get => Ok(Route::DiskUsage),
        ["labgpu", "top"] if get => Ok(Route::Top),
        ["build"] if post => Ok(Route::Build),
        ["build", "prune" | "cancel"] if post => Ok(Route::Forward),
        ["images", ..] => images(method, &segs[1..]).ok_or_else(not_allowed),
        ["distribution", .., "json"] if get => Ok(Route::Forward),
        ["auth"] if post => Ok(Route::Forward),
        ["networks", ..] => networks(method, &segs[1..]).ok_or_else(not_allowed),
        ["volumes", ..] => volumes(method, &segs[1..]).ok_or_else(not_allowed),
        // The client's side of a BuildKit build (file sync, registry auth), and BuildKit's
        // control API: see proxy::buildkit.
        ["session"] if post => Ok(Route::BuildKitSession),
        ["grpc"] if post => Ok(Route::BuildKit),
        ["plugins", ..] => Err(admin("plugins", "a plugin runs privileged on the host")),
        ["swarm", ..]
        | ["nodes", ..]
        | ["services", ..]
        | ["tasks", ..]
        | ["secrets", ..]
        | ["configs", ..] => Err(admin(
            "swarm",
            "swarm services are not created through the labgpu runtime policy",
        )),
        _ => Err(not_allowed()),
    }
}

/// `/images/…` (names may have slashes: the action is the last segment, as Docker's router
/// matches `{name:.*}/tag`).
fn images(method: &Method, segs: &[&str]) -> Option<Route> {
    let get = *method == Method::GET || *method == Method::HEAD;
    let joined = |s: &[&str]| s.join("/");
    Some(match (method.as_str(), segs) {
        ("DELETE", [_, ..]) => Route::Images(ImageRoute::Remove { name: joined(segs) }),
        (_, ["json" | "search" | "get"]) if get => Route::Forward,
        ("POST", ["load"]) => Route::Images(ImageRoute::Load),
        ("POST", ["create"]) => Route::Images(ImageRoute::Create),
        ("POST", ["prune"]) => Route::Images(ImageRoute::Prune),
        (_, [_, .., "json" | "history" | "get"]) if get => Route::Forward,
        ("POST", [name @ .., "push"]) if !name.is_empty() => Route::Forward,
        ("POST", [name @ .., "tag"]) if !name.is_empty() => {
            Route::Images(ImageRoute::Tag { name: joined(name) })
        }
        _ => return None,
    })
}

/// `/volumes/…`.
fn volumes(method: &Method, segs: &[&str]) -> Option<Route> {
    Some(Route::Volumes(match (method.as_str(), segs) {
        ("GET" | "HEAD", []) => VolumeRoute::List,
        ("POST", ["create"]) => VolumeRoute::Create,
        ("POST", ["prune"]) => VolumeRoute::Prune,
        ("GET" | "HEAD", [name]) => VolumeRoute::Inspect {
            name: name.to_string(),
        },
        ("DELETE", [name]) => VolumeRoute::Remove {
            name: name.to_string(),
        },
        _ => return None,
    }))
}

/// `/networks/…`.
fn networks(method: &Method, segs: &[&str]) -> Option<Route> {
    Some(Route::Networks(match (method.as_str(), segs) {
        ("GET" | "HEAD", []) => NetworkRoute::List,
        ("POST", ["create"]) => NetworkRoute::Create,
        ("POST", ["prune"]) => NetworkRoute::Prune,
        ("GET" | "HEAD", [id]) => NetworkRoute::Inspect { id: id.to_string() },
        ("DELETE", [id]) => NetworkRoute::Remove { id: id.to_string() },
        ("POST", [id, "connect" | "disconnect"]) => NetworkRoute::Member { id: id.to_string() },
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix_is_stripped() {
        assert_eq!(strip_version("/v1.41/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1.41"), "");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes/x"), "/volumes/x");
        assert_eq!(strip_version("/vx/containers"), "/vx/containers");
    }

    #[test]
    fn paths_are_classified_with_or_without_version() {
        let c = |m: Method, p: &str| classify(&m, p);
        for p in [
            "/containers/json",
            "/v1.41/containers/json",
            "/v1.24/events",
        ] {
            assert!(matches!(c(Method::GET, p), Ok(Route::Listing(_))), "{p}");
        }
        assert_eq!(
            c(Method::POST, "/v1.41/containers/create"),
            Ok(Route::Create)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/containers/prune"),
            Ok(Route::Listing(Listing::Prune))
        );
        assert_eq!(
            c(Method::POST, "/v1.41/containers/abc/attach"),
            Ok(Route::Container {
                id: "abc".into(),
                rest: "attach".into()
            })
        );
        assert_eq!(
            c(Method::DELETE, "/containers/web"),
            Ok(Route::Container {
                id: "web".into(),
                rest: String::new()
            })
        );
        assert_eq!(
            c(Method::PUT, "/v1.41/containers/abc/archive"),
            Ok(Route::Container {
                id: "abc".into(),
                rest: "archive".into()
            })
        );
        assert_eq!(
            c(Method::POST, "/v1.41/exec/e1/start"),
            Ok(Route::Exec { id: "e1".into() })
        );
        assert_eq!(c(Method::POST, "/v1.41/commit"), Ok(Route::Commit));
        assert_eq!(c(Method::POST, "/labgpu/session"), Ok(Route::Session));
        assert!(c(Method::GET, "/labgpu/session").is_err());
        assert!(c(Method::POST, "/labgpu/other").is_err());
        assert_eq!(c(Method::GET, "/v1.41/system/df"), Ok(Route::DiskUsage));
        assert_eq!(c(Method::POST, "/v1.41/build"), Ok(Route::Build));
        assert_eq!(
            c(Method::POST, "/v1.41/session"),
            Ok(Route::BuildKitSession)
        );
        assert_eq!(c(Method::POST, "/grpc"), Ok(Route::BuildKit));
        assert_eq!(c(Method::GET, "/labgpu/top"), Ok(Route::Top));
        assert!(matches!(
            c(Method::POST, "/labgpu/top"),
            Err(RuleError::NotAllowed { .. })
        ));
        assert!(matches!(
            c(Method::GET, "/labgpu/records"),
            Err(RuleError::NotAllowed { .. })
        ));
        assert_eq!(c(Method::HEAD, "/_ping"), Ok(Route::Forward));
        assert_eq!(
            c(
                Method::GET,
                "/v1.41/images/docker.io/library/busybox:latest/json"
            ),
            Ok(Route::Forward)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/networks/n1/connect"),
            Ok(Route::Networks(NetworkRoute::Member { id: "n1".into() }))
        );
        assert_eq!(
            c(Method::POST, "/v1.41/volumes/create"),
            Ok(Route::Volumes(VolumeRoute::Create))
        );
        assert!(matches!(
            c(Method::POST, "/v1.41/plugins/pull"),
            Err(RuleError::AdminOnly { .. })
        ));
        assert!(matches!(
            c(Method::POST, "/v1.41/swarm/init"),
            Err(RuleError::AdminOnly { .. })
        ));
        assert!(matches!(
            c(Method::GET, "/grpc"),
            Err(RuleError::NotAllowed { .. })
        ));
        assert!(matches!(
            c(Method::POST, "/v1.41/containers/json"),
            Ok(Route::Container { .. })
        ));
        assert!(matches!(
            c(Method::GET, "/v1.41/nonsense"),
            Err(RuleError::NotAllowed { .. })
        ));
    }

    #[test]
    fn image_names_with_slashes_and_their_actions() {
        let c = |m: Method, p: &str| classify(&m, p);
        let tag = |n: &str| Ok(Route::Images(ImageRoute::Tag { name: n.into() }));
        assert_eq!(
            c(Method::POST, "/v1.41/images/docker.io/alice/x:1/tag"),
            tag("docker.io/alice/x:1")
        );
        assert_eq!(c(Method::POST, "/images/busybox/tag"), tag("busybox"));
        assert_eq!(
            c(Method::DELETE, "/images/alice/tag"),
            Ok(Route::Images(ImageRoute::Remove {
                name: "alice/tag".into()
            }))
        );
        assert_eq!(
            c(Method::DELETE, "/images/load"),
            Ok(Route::Images(ImageRoute::Remove {
                name: "load".into()
            }))
        );
        assert_eq!(
            c(Method::POST, "/images/load"),
            Ok(Route::Images(ImageRoute::Load))
        );
        assert_eq!(c(Method::GET, "/images/alice/x/json"), Ok(Route::Forward));
        assert_eq!(c(Method::POST, "/images/alice/x/push"), Ok(Route::Forward));
        assert!(c(Method::POST, "/images/tag").is_err());
        assert!(c(Method::PUT, "/images/x/json").is_err());
        assert!(c(Method::PUT, "/volumes/x").is_err());
        assert_eq!(
            c(Method::DELETE, "/networks/n"),
            Ok(Route::Networks(NetworkRoute::Remove { id: "n".into() }))
        );
    }

    #[test]
    fn old_api_versions_are_refused() {
        for p in [
            "/v1.23/containers/x/start",
            "/v1.12/containers/create",
            "/v1/info",
        ] {
            assert!(
                matches!(classify(&Method::POST, p), Err(RuleError::OldApi(_))),
                "{p}"
            );
        }
        for p in [
            "/v1.24/containers/x/start",
            "/v1.41/containers/x/start",
            "/containers/x/start",
        ] {
            assert!(classify(&Method::POST, p).is_ok(), "{p}");
        }
    }

    #[test]
    fn paths_that_decode_or_clean_differently_are_refused() {
        for p in [
            "/v1.41/containers%2Fcreate",
            "/v1.41/containers/x/../../plugins/pull",
            "/v1.41//containers/create",
            "/v1.41/containers/./create",
            "containers/json",
            "/containers/a b/json",
        ] {
            assert!(
                matches!(classify(&Method::POST, p), Err(RuleError::BadPath(_))),
                "{p}"
            );
        }
    }
}
