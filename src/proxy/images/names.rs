//! Image names as Docker reads them, and whose they are. A user may create or move a name only
//! under their own prefix (`[proxy] image_prefix`, default `"{user}/"`: `alice/x` or
//! `localhost/alice/x`); every other name changes only by a pull of registry content or by
//! the administrator, so nobody can make `team/pytorch` (or a not-yet-pulled `ubuntu:22.04`)
//! run their code in someone else's container.

/// A reference split as Docker's `reference.ParseNormalizedNamed` does: the repository with
/// its registry made explicit (`docker.io/library/ubuntu`), and the tag or digest if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses `name[:tag][@digest]`; `None` for what Docker would reject (upper case, empty or
/// malformed components).
pub fn parse(s: &str) -> Option<ImageRef> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (s, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
        _ => (rest, None),
    };
    if tag.as_deref().is_some_and(|t| !valid_tag(t)) || name.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    let has_domain = parts.len() > 1
        && (first.contains(['.', ':']) || first == "localhost" || first != first.to_lowercase());
    let domain = if has_domain {
        parts.remove(0).to_string()
    } else {
        "docker.io".to_string()
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    if !valid_domain(&domain) {
        return None;
    }
    if domain == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    if !parts.iter().all(|p| valid_component(p)) {
        return None;
    }
    Some(ImageRef {
        repository: format!("{domain}/{}", parts.join("/")),
        tag,
        digest,
    })
}

/// `[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*`, Docker's path component, checked loosely: lower
/// case alphanumerics with separators inside.
fn valid_component(p: &str) -> bool {
    !p.is_empty()
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// `host[:port]`: dot-separated alphanumeric labels (hyphens inside), a numeric port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The repository prefixes (normalized, ending in '/') a user's names may have.
pub fn prefixes(template: &str, user: &str) -> Vec<String> {
    let expanded = template.replace("{user}", &user.to_ascii_lowercase());
    let mut out = Vec::new();
    if let Some(r) = parse(&format!("{expanded}x")) {
        let p = r.repository[..r.repository.len() - 1].to_string();
        // "alice/" is docker.io/alice/; a purely local name says so with localhost/.
        if p.starts_with("docker.io/") && !expanded.starts_with("docker.io/") {
            out.push(format!("localhost/{expanded}"));
        }
        out.push(p);
    }
    out
}

/// Whether `name` (as a user wrote it) lies under one of `prefixes`.
pub fn is_under(name: &str, prefixes: &[String]) -> bool {
    parse(name).is_some_and(|r| {
        let repo = format!("{}/", r.repository);
        prefixes
            .iter()
            .any(|p| repo.starts_with(p.as_str()) && repo.len() > p.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        let repo = |s: &str| parse(s).map(|r| r.repository);
        assert_eq!(repo("ubuntu").as_deref(), Some("docker.io/library/ubuntu"));
        assert_eq!(
            repo("ubuntu:22.04").as_deref(),
            Some("docker.io/library/ubuntu")
        );
        assert_eq!(repo("alice/x").as_deref(), Some("docker.io/alice/x"));
        assert_eq!(
            repo("index.docker.io/alice/x").as_deref(),
            Some("docker.io/alice/x")
        );
        assert_eq!(
            repo("localhost/alice/x").as_deref(),
            Some("localhost/alice/x")
        );
        assert_eq!(
            repo("localhost:5000/x:1").as_deref(),
            Some("localhost:5000/x")
        );
        assert_eq!(
            repo("reg.lab/team/pytorch@sha256:abc").as_deref(),
            Some("reg.lab/team/pytorch")
        );
        assert_eq!(parse("ubuntu:22.04").unwrap().tag.as_deref(), Some("22.04"));
        for bad in ["alice//x", "alice/x:", "", "alice/-x", "x:a/b"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_names_under_the_users_prefix() {
        let p = prefixes("{user}/", "alice");
        assert_eq!(p, ["localhost/alice/", "docker.io/alice/"]);
        for ok in [
            "alice/x",
            "alice/x:1",
            "docker.io/alice/x",
            "localhost/alice/team/x:v2",
        ] {
            assert!(is_under(ok, &p), "{ok}");
        }
        for bad in [
            "ubuntu:22.04",
            "team/pytorch",
            "alicex/y",
            "bob/x",
            "localhost/bob/x",
            "reg.lab/alice/x",
            "alice",
            "alice/",
        ] {
            assert!(!is_under(bad, &p), "{bad}");
        }
        let p = prefixes("reg.lab/{user}/", "Alice");
        assert_eq!(p, ["reg.lab/alice/"]);
        assert!(is_under("reg.lab/alice/model:1", &p));
        assert!(!is_under("alice/model", &p));
    }
}
