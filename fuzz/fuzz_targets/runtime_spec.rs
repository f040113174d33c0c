//! What the runtime face reads on a create or exec: the bundle's config.json through every
//! edit (`edits::apply_all`), an exec process file through `edits::process::sanitize`, and a
//! seccomp profile through `seccomp::enforce`, for alice's decision (`labgpu_fuzz::decision`).
//! A spec the edits accept is what runc runs, so it must keep alice's limits: her
//! capabilities only, no-new-privileges, her uid, her GPUs only (device list and device
//! cgroup), a seccomp profile, and her owner stamp.
#![no_main]

use labgpu::edits::{apply_all, process::sanitize, Report};
use labgpu::seccomp::{enforce, Context, NativeArch};
use labgpu_fuzz::{decision, CAPS, NVIDIA_MAJORS, OWNED};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    create(v.clone());
    exec(v.clone());
    // enforce is the slow part (Docker's defaults are built for every check): a profile
    // gets every architecture; a spec's own profile met x86_64 in `create` already.
    if v.get("defaultAction").is_some() || v.get("syscalls").is_some() {
        seccomp(
            &v,
            &[Some(NativeArch::X86_64), Some(NativeArch::Aarch64), None],
        );
    } else if let Some(profile) = v.pointer("/linux/seccomp") {
        seccomp(profile, &[Some(NativeArch::Aarch64)]);
    }
});

fn create(mut spec: Value) {
    if !spec.is_object() {
        // runtime::prepare_create loads config.json as any JSON value.
        let _ = apply_all(&mut spec, &decision(), &mut Report::default());
        return;
    }
    if apply_all(&mut spec, &decision(), &mut Report::default()).is_err() {
        return;
    }
    if let Some(process) = spec.get("process") {
        check_process(process, &spec);
    }
    check_devices(&spec);
    let seccomp = spec.pointer("/linux/seccomp");
    assert!(
        seccomp.is_some_and(|s| !s.is_null()),
        "accepted spec runs without seccomp: {spec}"
    );
    assert_eq!(
        spec.pointer("/annotations/io.labgpu.owner")
            .and_then(Value::as_str),
        Some("alice"),
        "accepted spec without the owner stamp"
    );
}

fn exec(mut process: Value) {
    let rules = decision().process;
    if sanitize(&mut process, &rules, &mut Report::default()).is_ok() {
        check_process(&process, &process);
    }
}

/// alice's capabilities only, no-new-privileges, uid/gid 1001, no extra groups.
fn check_process(p: &Value, whole: &Value) {
    // The sets runc reads. Keys are compared exactly, as the edits read them (runc's Go
    // decoder would also take "Bounding"; config.json and process files come from
    // containerd, which writes the exact names).
    if let Some(Value::Object(caps)) = p.get("capabilities") {
        let sets = [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ];
        for (set, list) in caps.iter().filter(|(k, _)| sets.contains(&k.as_str())) {
            for c in list.as_array().into_iter().flatten() {
                assert!(
                    c.as_str().is_some_and(|c| CAPS.contains(&c)),
                    "capability {c} kept in {set}: {whole}"
                );
            }
        }
    }
    assert_eq!(
        p.get("noNewPrivileges"),
        Some(&Value::Bool(true)),
        "{whole}"
    );
    let user = p.get("user").expect("user forced");
    assert_eq!(user.get("uid").and_then(Value::as_u64), Some(1001));
    assert_eq!(user.get("gid").and_then(Value::as_u64), Some(1001));
    assert!(user.get("additionalGids").is_none(), "{whole}");
    let env = p.get("env").and_then(Value::as_array).expect("env list");
    for e in env.iter().filter_map(Value::as_str) {
        assert!(
            !e.starts_with("NVIDIA_VISIBLE_DEVICES=") || e == "NVIDIA_VISIBLE_DEVICES=void",
            "{e} kept: {whole}"
        );
    }
}

/// No device node and no read/write cgroup rule reaches a GPU alice does not own.
fn check_devices(spec: &Value) {
    let owned = |major: i64, minor: i64| OWNED.contains(&(major, minor));
    for dev in spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let major = dev.get("major").and_then(Value::as_i64);
        let minor = dev.get("minor").and_then(Value::as_i64);
        if let (Some(major), Some(minor)) = (major, minor) {
            assert!(
                !NVIDIA_MAJORS.contains(&major) || owned(major, minor),
                "device {dev} kept: {spec}"
            );
        }
    }
    for rule in spec
        .pointer("/linux/resources/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if rule.get("allow").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let access = rule.get("access").and_then(Value::as_str).unwrap_or("rwm");
        if !access.contains(['r', 'w']) {
            continue;
        }
        let kind = rule.get("type").and_then(Value::as_str);
        // runc refuses any other type ("invalid cgroup device type").
        if kind.is_some_and(|k| !matches!(k, "a" | "b" | "c" | "u")) {
            continue;
        }
        // runc reads a negative or absent number as "any".
        let num = |k: &str| rule.get(k).and_then(Value::as_i64).filter(|n| *n >= 0);
        let (major, minor) = (num("major"), num("minor"));
        assert!(
            matches!(kind, Some("c" | "u" | "b")) && major.is_some(),
            "rule {rule} grants rw on every device: {spec}"
        );
        if kind != Some("b") && NVIDIA_MAJORS.contains(&major.unwrap_or(-1)) {
            assert!(
                minor.is_some_and(|m| owned(major.unwrap_or(-1), m)),
                "rule {rule} grants a GPU alice does not own: {spec}"
            );
        }
    }
}

/// A profile as a spec's `linux.seccomp`, for the capabilities Docker's default asks for.
fn seccomp(profile: &Value, arches: &[Option<NativeArch>]) {
    let requested: Vec<String> = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SYS_ADMIN",
        "CAP_NET_BIND_SERVICE",
    ]
    .map(String::from)
    .to_vec();
    let kept: Vec<String> = requested
        .iter()
        .filter(|c| CAPS.contains(&c.as_str()))
        .cloned()
        .collect();
    let d = decision();
    for &arch in arches {
        let ctx = Context {
            requested_caps: &requested,
            kept_caps: &kept,
            arch,
            kernel: d.host.kernel,
            allowed_sha256: &d.seccomp_profiles,
        };
        let _ = enforce(profile, &ctx);
    }
}
