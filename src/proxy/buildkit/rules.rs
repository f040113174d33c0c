//! What a user's BuildKit build may ask for. The build runs in dockerd's BuildKit with the
//! Dockerfile frontend built into dockerd; its `RUN` steps run under labgpu
//! (`crate::runtime`, build-step mode). What the runtime cannot see is checked here:
//!
//! - entitlements: `network.host` only with `allow_host_network`, nothing else;
//! - exports: the image exporter's names obey the image-name rule; local and tar outputs go
//!   back to the caller's own session;
//! - the frontend: dockerd's own Dockerfile frontend only, never a frontend image
//!   (`# syntax=`, `BUILDKIT_SYNTAX`, `gateway.v0`) nor raw LLB, which could name any cache
//!   mount; cache mounts are the caller's own through `BUILDKIT_CACHE_MOUNT_NS`;
//! - sources: no git (BuildKit clones as root from the host, with root's ssh identity), by
//!   a source policy the proxy sets (a user's own policy is refused: it could convert
//!   sources around it);
//! - caches: no cache imports (an imported cache is saved into the daemon's shared cache,
//!   where another user's identical step would find a planted layer).

use prost::Message;

use super::wire::{
    BridgeSolveRequest, CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, SourcePolicy,
    SourceRule, SourceSelector,
};
use crate::proxy::images::names;
use crate::proxy::request::UserCtx;

/// The only frontend a user's build may use: the Dockerfile frontend built into dockerd.
pub const DOCKERFILE_FRONTEND: &str = "dockerfile.v0";
/// The frontend option that makes the Dockerfile frontend the final one: set, it never
/// forwards to a frontend image named by `# syntax=` or `BUILDKIT_SYNTAX`.
const NO_FORWARD_KEY: &str = "cmdline";
/// The build argument that prefixes every cache mount id the Dockerfile frontend makes.
const CACHE_NS_KEY: &str = "build-arg:BUILDKIT_CACHE_MOUNT_NS";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildRuleError {
    #[error("the build entitlement {0:?} is not allowed through the labgpu proxy: build steps run with labgpu's confinement only")]
    Entitlement(String),
    #[error("the build entitlement network.host is not allowed for {user} (allow_host_network in {section})")]
    HostNetwork { user: String, section: String },
    #[error("the build frontend {0:?} is not allowed through the labgpu proxy: only dockerd's own Dockerfile frontend ({DOCKERFILE_FRONTEND}) runs users' builds")]
    Frontend(String),
    #[error("raw LLB definitions are not allowed through the labgpu proxy: build from a Dockerfile (the proxy cannot check the cache mounts LLB names)")]
    Definition,
    #[error("frontend inputs are not allowed through the labgpu proxy: name build contexts as docker-image:// or local directories")]
    FrontendInputs,
    #[error("cache imports ({0}) are not allowed through the labgpu proxy: an imported cache would be shared with every user's builds")]
    CacheImport(String),
    #[error("cache exports of type {0:?} are not allowed through the labgpu proxy (inline, local or registry)")]
    CacheExport(String),
    #[error("the exporter {0:?} is not allowed through the labgpu proxy (moby, local or tar)")]
    Exporter(String),
    #[error(
        "the image exporter's option {0:?} is not allowed through the labgpu proxy (name, push)"
    )]
    ExporterAttr(String),
    #[error("users may name images only under their own prefix ({prefixes}, [proxy] image_prefix); {name:?} is not")]
    ImageName { name: String, prefixes: String },
    #[error("the build option {key}={value:?} is not allowed through the labgpu proxy: {reason}")]
    Option {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the build option {0:?} is not one the labgpu proxy knows; it refuses what it cannot check"
    )]
    UnknownOption(String),
    #[error("source policies are not allowed through the labgpu proxy: the proxy sets the build's own (no git sources)")]
    SourcePolicy,
}

/// Every git source (`ADD git@…`, `ADD https://…/x.git`, git build contexts; BuildKit names
/// them all `git://…`): dockerd clones them as root, from the host's network, where root's
/// ssh identity may reach what the user's does not. Clone the repository and send it as
/// part of the context.
pub fn no_git_policy() -> Vec<u8> {
    SourcePolicy {
        version: 1,
        rules: vec![SourceRule {
            action: 1,
            selector: Some(SourceSelector {
                identifier: "git://*".into(),
                match_type: 0,
            }),
        }],
    }
    .encode_to_vec()
}

/// `Control/Solve`: the build as a whole. Returns the request to forward.
pub fn check_solve(
    mut req: SolveRequest,
    ctx: &UserCtx,
    uid: u32,
) -> Result<SolveRequest, BuildRuleError> {
    for e in &req.entitlements {
        check_entitlement(e, ctx)?;
    }
    // Empty: the caller runs the frontend (buildx does) and asks through LLBBridge/Solve.
    if !req.frontend.is_empty() && req.frontend != DOCKERFILE_FRONTEND {
        return Err(BuildRuleError::Frontend(req.frontend));
    }
    if req.definition.is_some() {
        return Err(BuildRuleError::Definition);
    }
    if !req.frontend_inputs.is_empty() {
        return Err(BuildRuleError::FrontendInputs);
    }
    if req.source_policy.is_some() {
        return Err(BuildRuleError::SourcePolicy);
    }
    req.source_policy = Some(no_git_policy());
    if let Some(cache) = &req.cache {
        check_cache(cache)?;
    }
    if !req.exporter_deprecated.is_empty() {
        check_exporter(
            &Exporter {
                r#type: req.exporter_deprecated.clone(),
                attrs: req.exporter_attrs_deprecated.clone(),
            },
            ctx,
        )?;
    }
    for e in &req.exporters {
        check_exporter(e, ctx)?;
    }
    check_frontend_opts(&mut req.frontend_attrs, ctx, uid)?;
    Ok(req)
}

/// `LLBBridge/Solve`: what the caller's frontend asks within its build.
pub fn check_bridge_solve(
    mut req: BridgeSolveRequest,
    ctx: &UserCtx,
    uid: u32,
) -> Result<BridgeSolveRequest, BuildRuleError> {
    if req.definition.is_some() {
        return Err(BuildRuleError::Definition);
    }
    if req.frontend != DOCKERFILE_FRONTEND {
        return Err(BuildRuleError::Frontend(req.frontend));
    }
    if !req.frontend_inputs.is_empty() {
        return Err(BuildRuleError::FrontendInputs);
    }
    if let Some(first) = req.cache_imports.first() {
        return Err(BuildRuleError::CacheImport(first.r#type.clone()));
    }
    if !req.source_policies.is_empty() {
        return Err(BuildRuleError::SourcePolicy);
    }
    check_frontend_opts(&mut req.frontend_opt, ctx, uid)?;
    Ok(req)
}

fn check_entitlement(e: &str, ctx: &UserCtx) -> Result<(), BuildRuleError> {
    match e {
        "network.host" if ctx.allow_host_network => Ok(()),
        "network.host" => Err(BuildRuleError::HostNetwork {
            user: ctx.name.clone(),
            section: ctx.section(),
        }),
        _ => Err(BuildRuleError::Entitlement(e.to_string())),
    }
}

fn check_cache(cache: &CacheOptions) -> Result<(), BuildRuleError> {
    if let Some(r) = cache.import_refs_deprecated.first() {
        return Err(BuildRuleError::CacheImport(format!("registry {r}")));
    }
    if let Some(i) = cache.imports.first() {
        return Err(BuildRuleError::CacheImport(i.r#type.clone()));
    }
    // A cache export reads the daemon's cache and writes it where the caller says (its own
    // session, a registry with its own credentials): nothing comes back into the daemon.
    for CacheOptionsEntry { r#type, .. } in &cache.exports {
        if !matches!(r#type.as_str(), "inline" | "local" | "registry") {
            return Err(BuildRuleError::CacheExport(r#type.clone()));
        }
    }
    Ok(())
}

fn check_exporter(e: &Exporter, ctx: &UserCtx) -> Result<(), BuildRuleError> {
    match e.r#type.as_str() {
        // dockerd's image exporter.
        "moby" => {
            for (k, v) in &e.attrs {
                match k.as_str() {
                    "name" => check_names(v, ctx)?,
                    // dockerd's exporter ignores it; buildx pushes through /images/{name}/push.
                    "push" => {}
                    _ => return Err(BuildRuleError::ExporterAttr(k.clone())),
                }
            }
            Ok(())
        }
        // Files sent back to the caller's own session: their layout options harm nobody.
        "local" | "tar" => Ok(()),
        other => Err(BuildRuleError::Exporter(other.to_string())),
    }
}

fn check_names(names: &str, ctx: &UserCtx) -> Result<(), BuildRuleError> {
    for name in names.split(',').map(str::trim) {
        if !names::is_under(name, &ctx.image_prefixes) {
            return Err(BuildRuleError::ImageName {
                name: name.to_string(),
                prefixes: ctx.image_prefixes.join(" or "),
            });
        }
    }
    Ok(())
}

/// The Dockerfile frontend's options, checked one by one (allowlist), then the two the proxy
/// sets: no forwarding to frontend images, and cache mounts under the caller's namespace.
fn check_frontend_opts(
    opts: &mut std::collections::BTreeMap<String, String>,
    ctx: &UserCtx,
    uid: u32,
) -> Result<(), BuildRuleError> {
    for (k, v) in opts.iter() {
        check_frontend_opt(k, v, ctx)?;
    }
    opts.insert(NO_FORWARD_KEY.into(), "labgpu".into());
    opts.insert(CACHE_NS_KEY.into(), cache_namespace(uid));
    // BuildKit leaves cache mount ids out of a step's cache key: without this, a user's
    // step whose output came from their own cache mount would be reused for another user's
    // identical step. The steps' hostname is in the key, so each uid's RUN steps are cached
    // apart (COPY, ADD and FROM, which no cache mount feeds, stay shared).
    opts.insert("hostname".into(), cache_namespace(uid));
    Ok(())
}

/// The cache mount namespace of a uid: its cache mounts are `<namespace>/<id>`, never
/// another uid's.
pub fn cache_namespace(uid: u32) -> String {
    format!("labgpu-uid-{uid}")
}

/// Dockerfile frontend options that only shape the caller's own build.
const PLAIN_OPTS: &[&str] = &[
    "filename",
    "target",
    "platform",
    "no-cache",
    "image-resolve-mode",
    "add-hosts",
    "shm-size",
    "ulimit",
    "hostname",
    "multi-platform",
    "frontend.caps",
    "requestid",
    "contextsubdir",
    "attest:provenance",
    // Names of the caller's own session directories (a Dockerfile from stdin).
    "dockerfilekey",
    "contextkey",
];

fn check_frontend_opt(k: &str, v: &str, ctx: &UserCtx) -> Result<(), BuildRuleError> {
    let refuse = |reason: &'static str| BuildRuleError::Option {
        key: k.to_string(),
        value: v.to_string(),
        reason,
    };
    if PLAIN_OPTS.contains(&k) || k.starts_with("vcs:") {
        return Ok(());
    }
    match k {
        "force-network-mode" => match v {
            "" | "default" | "sandbox" | "none" => Ok(()),
            "host" => check_entitlement("network.host", ctx),
            _ => Err(refuse("the network modes are sandbox, none and host")),
        },
        "cache-imports" | "cache-from" if matches!(v, "" | "[]" | "null") => Ok(()),
        "cache-imports" | "cache-from" => Err(BuildRuleError::CacheImport(v.to_string())),
        "cgroup-parent" if v.is_empty() => Ok(()),
        "cgroup-parent" => Err(refuse("only the administrator places containers in cgroups")),
        "context" => Err(refuse(
            "dockerd would fetch a remote context itself, as root from the host's network; send the context from a local directory",
        )),
        NO_FORWARD_KEY | "source" => Err(refuse("build frontends other than dockerd's own are not allowed")),
        _ => check_prefixed_opt(k, v, ctx).map_err(|e| match e {
            Some(reason) => refuse(reason),
            None => BuildRuleError::UnknownOption(k.to_string()),
        }),
    }
}

/// `build-arg:`, `label:` and `context:` options; `Err(None)` for an unknown option.
fn check_prefixed_opt(k: &str, v: &str, ctx: &UserCtx) -> Result<(), Option<&'static str>> {
    if let Some(arg) = k.strip_prefix("build-arg:") {
        return match arg {
            "BUILDKIT_SYNTAX" => Err(Some(
                "build frontends other than dockerd's own are not allowed",
            )),
            "BUILDKIT_CACHE_MOUNT_NS" => Err(Some(
                "the cache mount namespace is the labgpu proxy's to set (each user's cache mounts are their own)",
            )),
            _ => Ok(()),
        };
    }
    if let Some(label) = k.strip_prefix("label:") {
        if label == ctx.owner_label {
            return Err(Some("the owner label is the proxy's to set"));
        }
        return Ok(());
    }
    if k.starts_with("context:") {
        // Another image, or a directory of the caller's own session; never a URL dockerd
        // would fetch, nor another build's result.
        if v.starts_with("docker-image://") || v.starts_with("local:") {
            return Ok(());
        }
        return Err(Some(
            "named contexts may be docker-image:// references or local directories",
        ));
    }
    Err(None)
}

#[cfg(test)]
mod tests;
