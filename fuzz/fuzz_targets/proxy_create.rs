//! JSON bodies a policy user sends the proxy: `POST /containers/create` (checked and rewritten
//! as the server does, with every referenced container the caller's), and the same bytes as a
//! `container update`, `volume create`, `network create` and `network connect` body.
//! A body the rules accept must come out owned by the caller, with the forced runtime, and
//! with every checked field spelled as dockerd will read it.
#![no_main]

use std::collections::BTreeMap;

use labgpu::paths::normalize;
use labgpu::proxy::containers::{
    check_update, create_container_refs, named_volumes, network_names, rewrite_create, Resolved,
};
use labgpu::proxy::networks::{network_member, rewrite_network_create, set_network_member};
use labgpu::proxy::volumes::rewrite_volume_create;
use labgpu_fuzz::{go_field, user_ctx, OWNER_LABEL, RUNTIME};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    create(body.clone());
    let _ = check_update(&mut body.clone(), &labgpu_fuzz::ceilings());
    volume_create(body.clone());
    network_create(body.clone());
    network_connect(body);
});

/// A made-up full id for a container name, as `owned_container` would resolve it.
fn full_id(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

fn create(mut body: Value) {
    let ctx = user_ctx();
    let Ok(refs) = create_container_refs(&mut body) else {
        return;
    };
    let mut resolved = Resolved::default();
    for r in refs {
        let id = full_id(&r.name);
        resolved.containers.insert(r.name, id);
    }
    // What the server would look up next; the shapes must not panic either.
    let volumes = named_volumes(&body);
    let _ = network_names(&body);
    for v in volumes.into_iter().flatten() {
        if v.name.starts_with("ro") {
            resolved.read_only_volumes.insert(v.name);
        }
    }
    resolved.image_volumes = vec!["/data".into(), "/var/lib/app".into()];
    if rewrite_create(&mut body, &ctx, &resolved, &|p| normalize(p)).is_err() {
        return;
    }
    let top = body.as_object().expect("an accepted body is an object");
    let labels = go_field(top, "Labels").and_then(Value::as_object);
    assert_eq!(
        labels.and_then(|l| l.get(OWNER_LABEL)),
        Some(&Value::String("alice".into())),
        "accepted create without the caller as owner: {body}"
    );
    let hc = go_field(top, "HostConfig")
        .and_then(Value::as_object)
        .expect("an accepted create has a HostConfig object");
    assert_eq!(
        go_field(hc, "Runtime"),
        Some(&Value::String(RUNTIME.into())),
        "accepted create without the forced runtime: {body}"
    );
    assert_ne!(
        go_field(hc, "Privileged"),
        Some(&Value::Bool(true)),
        "privileged create accepted: {body}"
    );
    for field in [
        "NetworkMode",
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "CgroupnsMode",
    ] {
        assert_ne!(
            go_field(hc, field).and_then(Value::as_str),
            Some("host"),
            "host {field} accepted: {body}"
        );
    }
    for field in [
        "Binds",
        "Mounts",
        "Devices",
        "SecurityOpt",
        "CgroupParent",
        "VolumesFrom",
        "Links",
        "Annotations",
        "MaskedPaths",
        "ReadonlyPaths",
        "LogConfig",
        "VolumeDriver",
    ] {
        let _ = go_field(hc, field);
    }
    // Every container reference was pinned to the id it resolved to.
    for field in ["PidMode", "IpcMode", "NetworkMode", "Cgroup"] {
        if let Some(name) = go_field(hc, field)
            .and_then(Value::as_str)
            .and_then(|m| m.strip_prefix("container:"))
        {
            assert!(
                resolved.containers.values().any(|id| id == name),
                "{field} container:{name} not pinned to a resolved id: {body}"
            );
        }
    }
}

fn volume_create(mut body: Value) {
    if rewrite_volume_create(&mut body, &user_ctx()).is_ok() {
        let labels = go_field(body.as_object().expect("object"), "Labels");
        assert_eq!(
            labels.and_then(|l| l.get(OWNER_LABEL)),
            Some(&Value::String("alice".into())),
            "accepted volume create without the caller as owner: {body}"
        );
    }
}

fn network_create(mut body: Value) {
    if rewrite_network_create(&mut body, &user_ctx()).is_ok() {
        let labels = go_field(body.as_object().expect("object"), "Labels");
        assert_eq!(
            labels.and_then(|l| l.get(OWNER_LABEL)),
            Some(&Value::String("alice".into())),
            "accepted network create without the caller as owner: {body}"
        );
    }
}

fn network_connect(mut body: Value) {
    let Ok((member, links)) = network_member(&mut body) else {
        return;
    };
    let owned: BTreeMap<String, String> = links.iter().map(|l| (l.clone(), full_id(l))).collect();
    let id = full_id(&member);
    if set_network_member(&mut body, &id, &owned).is_ok() {
        let obj = body.as_object().expect("object");
        assert_eq!(
            go_field(obj, "Container").and_then(Value::as_str),
            Some(id.as_str()),
            "connect body's container not pinned: {body}"
        );
    }
}
