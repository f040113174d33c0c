//! The checks on encoded requests as buildx sends them: each case encodes a message with
//! prost, decodes it as the proxy does (`wire::decode`), and checks it.

use std::collections::BTreeMap;

use prost::Message;

use super::*;
use crate::proxy::buildkit::wire::{self, CacheOptions, CacheOptionsEntry};
use crate::proxy::request::test_ctx as ctx;

const ALICE: u32 = 1001;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Control/Solve as buildx 0.13 sends `docker build -t alice/x .` (docker driver).
fn buildx_solve() -> SolveRequest {
    SolveRequest {
        r#ref: "k3j2h1".into(),
        session: "s3ss10n".into(),
        exporters: vec![Exporter {
            r#type: "moby".into(),
            attrs: map(&[("name", "docker.io/alice/x:latest")]),
        }],
        cache: Some(CacheOptions::default()),
        ..Default::default()
    }
}

/// LLBBridge/Solve from buildx's client-side build function.
fn buildx_bridge_solve() -> BridgeSolveRequest {
    BridgeSolveRequest {
        frontend: DOCKERFILE_FRONTEND.into(),
        frontend_opt: map(&[
            ("filename", "Dockerfile"),
            ("build-arg:HTTP_PROXY", ""),
            ("label:team", "vision"),
            ("no-cache", ""),
            ("vcs:source", "https://example.org/x.git"),
            ("image-resolve-mode", "default"),
        ]),
        allow_result_return: true,
        allow_result_array_ref: true,
        ..Default::default()
    }
}

/// Encodes, decodes as the proxy does, checks.
fn solve(m: SolveRequest) -> Result<SolveRequest, BuildRuleError> {
    let bytes = m.encode_to_vec();
    let decoded = wire::decode::<SolveRequest>("SolveRequest", SolveRequest::FIELDS, &bytes)
        .expect("decodes");
    check_solve(decoded, &ctx(), ALICE)
}

fn bridge(m: BridgeSolveRequest) -> Result<BridgeSolveRequest, BuildRuleError> {
    let bytes = m.encode_to_vec();
    let decoded = wire::decode::<BridgeSolveRequest>(
        "frontend SolveRequest",
        BridgeSolveRequest::FIELDS,
        &bytes,
    )
    .expect("decodes");
    check_bridge_solve(decoded, &ctx(), ALICE)
}

#[test]
fn a_plain_buildx_build_passes() {
    let out = solve(buildx_solve()).unwrap();
    assert_eq!(out.exporters, buildx_solve().exporters);
    let out = bridge(buildx_bridge_solve()).unwrap();
    assert_eq!(out.frontend_opt["label:team"], "vision");
}

#[test]
fn cache_mounts_are_namespaced_per_uid_and_frontend_images_are_off() {
    let out = bridge(buildx_bridge_solve()).unwrap();
    assert_eq!(
        out.frontend_opt["build-arg:BUILDKIT_CACHE_MOUNT_NS"],
        "labgpu-uid-1001"
    );
    assert!(out.frontend_opt.contains_key("cmdline"));
    // RUN steps are cached per uid: cache mount ids are not in BuildKit's cache keys.
    assert_eq!(out.frontend_opt["hostname"], "labgpu-uid-1001");
    let other = check_bridge_solve(buildx_bridge_solve(), &ctx(), 1002).unwrap();
    assert_ne!(
        other.frontend_opt["build-arg:BUILDKIT_CACHE_MOUNT_NS"],
        out.frontend_opt["build-arg:BUILDKIT_CACHE_MOUNT_NS"]
    );
    // The same on Control/Solve, for clients that name the frontend there.
    let mut m = buildx_solve();
    m.frontend = DOCKERFILE_FRONTEND.into();
    let out = solve(m).unwrap();
    assert_eq!(
        out.frontend_attrs["build-arg:BUILDKIT_CACHE_MOUNT_NS"],
        "labgpu-uid-1001"
    );
}

#[test]
fn entitlements_insecure_never_host_network_by_policy() {
    let mut m = buildx_solve();
    m.entitlements = vec!["security.insecure".into()];
    let e = solve(m).unwrap_err();
    assert_eq!(e, BuildRuleError::Entitlement("security.insecure".into()));
    assert!(e.to_string().contains("security.insecure"), "{e}");

    let mut m = buildx_solve();
    m.entitlements = vec!["network.host".into()];
    let e = solve(m.clone()).unwrap_err();
    assert!(
        e.to_string()
            .contains("allow_host_network in [defaults] or [users.alice]"),
        "{e}"
    );
    let mut allowed = ctx();
    allowed.allow_host_network = true;
    check_solve(m, &allowed, ALICE).unwrap();

    let mut m = buildx_solve();
    m.entitlements = vec!["device".into()];
    assert!(solve(m).is_err());

    let mut b = buildx_bridge_solve();
    b.frontend_opt
        .insert("force-network-mode".into(), "host".into());
    assert!(matches!(bridge(b), Err(BuildRuleError::HostNetwork { .. })));
}

#[test]
fn image_names_obey_the_prefix_rule() {
    for bad in [
        "docker.io/bob/x:latest",
        "ubuntu:22.04",
        "alice/x,team/pytorch",
    ] {
        let mut m = buildx_solve();
        m.exporters[0].attrs.insert("name".into(), bad.into());
        assert!(
            matches!(solve(m), Err(BuildRuleError::ImageName { .. })),
            "{bad}"
        );
    }
    let mut m = buildx_solve();
    m.exporters[0].attrs = map(&[("name", "alice/a,alice/b:2"), ("push", "false")]);
    solve(m).unwrap();
    // The deprecated single exporter is checked the same way.
    let mut m = buildx_solve();
    m.exporters.clear();
    m.exporter_deprecated = "moby".into();
    m.exporter_attrs_deprecated = map(&[("name", "bob/x")]);
    assert!(solve(m).is_err());
    let mut m = buildx_solve();
    m.exporters[0]
        .attrs
        .insert("containerimage.config".into(), "{}".into());
    assert!(matches!(solve(m), Err(BuildRuleError::ExporterAttr(_))));
    let mut m = buildx_solve();
    m.exporters.push(Exporter {
        r#type: "local".into(),
        attrs: map(&[("platform-split", "false")]),
    });
    solve(m).unwrap();
    let mut m = buildx_solve();
    m.exporters[0].r#type = "oci".into();
    assert!(matches!(solve(m), Err(BuildRuleError::Exporter(_))));
}

#[test]
fn frontends_llb_and_inputs_other_than_dockerds_dockerfile_are_refused() {
    let mut m = buildx_solve();
    m.frontend = "gateway.v0".into();
    assert!(matches!(solve(m), Err(BuildRuleError::Frontend(_))));
    let mut m = buildx_solve();
    m.definition = Some(vec![]);
    assert_eq!(solve(m).unwrap_err(), BuildRuleError::Definition);
    let mut m = buildx_solve();
    m.frontend_inputs.insert("context".into(), vec![]);
    assert_eq!(solve(m).unwrap_err(), BuildRuleError::FrontendInputs);

    let mut b = buildx_bridge_solve();
    b.definition = Some(vec![10, 0]);
    assert_eq!(bridge(b).unwrap_err(), BuildRuleError::Definition);
    let mut b = buildx_bridge_solve();
    b.frontend = "gateway.v0".into();
    assert!(bridge(b).is_err());
    for (k, v) in [
        ("build-arg:BUILDKIT_SYNTAX", "evil/frontend"),
        ("build-arg:BUILDKIT_CACHE_MOUNT_NS", "labgpu-uid-1002"),
        ("cmdline", "x"),
        ("source", "evil/frontend"),
        ("context", "https://github.com/a/b.git"),
        ("context:base", "https://example.org/ctx.tar"),
        ("context:base", "input:other"),
        ("cgroup-parent", "/system.slice"),
        ("label:labgpu.user", "bob"),
        ("attest:sbom", "generator=evil/scanner"),
        ("bogus", "1"),
    ] {
        let mut b = buildx_bridge_solve();
        b.frontend_opt.insert(k.into(), v.into());
        assert!(bridge(b).is_err(), "{k}={v}");
    }
    let mut b = buildx_bridge_solve();
    b.frontend_opt
        .insert("context:base".into(), "docker-image://alice/base".into());
    bridge(b).unwrap();
}

#[test]
fn cache_imports_are_refused_exports_limited() {
    let mut m = buildx_solve();
    m.cache = Some(CacheOptions {
        imports: vec![CacheOptionsEntry {
            r#type: "registry".into(),
            attrs: map(&[("ref", "evil.example/cache")]),
        }],
        ..Default::default()
    });
    assert!(matches!(solve(m), Err(BuildRuleError::CacheImport(_))));
    let mut m = buildx_solve();
    m.cache = Some(CacheOptions {
        import_refs_deprecated: vec!["evil.example/cache".into()],
        ..Default::default()
    });
    assert!(solve(m).is_err());
    let mut b = buildx_bridge_solve();
    b.cache_imports.push(CacheOptionsEntry {
        r#type: "local".into(),
        attrs: BTreeMap::new(),
    });
    assert!(bridge(b).is_err());
    let mut b = buildx_bridge_solve();
    b.frontend_opt.insert(
        "cache-imports".into(),
        r#"[{"Type":"registry","Attrs":{"ref":"evil.example/c"}}]"#.into(),
    );
    assert!(bridge(b).is_err());
    let mut m = buildx_solve();
    m.cache = Some(CacheOptions {
        exports: vec![CacheOptionsEntry {
            r#type: "inline".into(),
            attrs: BTreeMap::new(),
        }],
        ..Default::default()
    });
    solve(m).unwrap();
    let mut m = buildx_solve();
    m.cache = Some(CacheOptions {
        exports: vec![CacheOptionsEntry {
            r#type: "gha".into(),
            attrs: BTreeMap::new(),
        }],
        ..Default::default()
    });
    assert!(matches!(solve(m), Err(BuildRuleError::CacheExport(_))));
}

#[test]
fn git_sources_are_denied_by_the_proxys_source_policy() {
    let out = solve(buildx_solve()).unwrap();
    let policy = wire::SourcePolicy::decode(out.source_policy.unwrap().as_slice()).unwrap();
    assert_eq!(policy.version, 1);
    let rule = &policy.rules[0];
    assert_eq!(rule.action, 1, "deny");
    let selector = rule.selector.as_ref().unwrap();
    assert_eq!(
        (selector.identifier.as_str(), selector.match_type),
        ("git://*", 0)
    );
    // A user's own policy could allow or convert around it.
    let mut m = buildx_solve();
    m.source_policy = Some(vec![]);
    assert_eq!(solve(m).unwrap_err(), BuildRuleError::SourcePolicy);
    let mut b = buildx_bridge_solve();
    b.source_policies.push(vec![]);
    assert_eq!(bridge(b).unwrap_err(), BuildRuleError::SourcePolicy);
}
