//! The seccomp model against profiles a real dockerd wrote (Debian 12's 20.10.24, in the
//! fixtures integration/capture-fixtures.sh captured): identified as Docker's default for
//! the bounding set it was resolved for, and narrowed to the capabilities labgpu keeps.
//! integration/seccomp-docker.sh does the same against whatever dockerd is installed.

use labgpu::seccomp::{
    enforce, from_value, identify_default, Context, Generation, KernelVersion, NativeArch, Outcome,
};
use serde_json::Value;

/// Any kernel from 4.8 on resolves Docker's default alike; the capture ran on one.
const KERNEL: KernelVersion = KernelVersion::new(6, 1);

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/docker20/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn bounding(spec: &Value) -> Vec<String> {
    spec["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dockerd_20_10_24_defaults_are_identified() {
    for name in ["plain", "caps-all", "labels", "user"] {
        let spec = fixture(name);
        let p = from_value(&spec["linux"]["seccomp"]).unwrap();
        assert_eq!(
            identify_default(&p, &bounding(&spec), NativeArch::X86_64, KERNEL),
            Some(Generation::V20_10_18),
            "{name}"
        );
    }
}

#[test]
fn cap_add_all_default_is_narrowed_to_the_kept_caps() {
    let spec = fixture("caps-all");
    let requested = bounding(&spec);
    assert!(requested.iter().any(|c| c == "CAP_SYS_ADMIN"));
    let kept = bounding(&fixture("plain"));
    let ctx = Context {
        requested_caps: &requested,
        kept_caps: &kept,
        arch: Some(NativeArch::X86_64),
        kernel: KERNEL,
        allowed_sha256: &[],
    };
    let Outcome::ReplaceDefault {
        generation,
        profile,
    } = enforce(&spec["linux"]["seccomp"], &ctx).unwrap()
    else {
        panic!("not replaced");
    };
    assert_eq!(generation, Generation::V20_10_18);
    // Exactly what that dockerd wrote for a container with only the kept capabilities.
    assert_eq!(profile, fixture("plain")["linux"]["seccomp"]);
}
