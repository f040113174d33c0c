//! What an admin sees from the CLI before a policy exists, and how errors name their cause.

mod common;

use std::process::Command;

fn labgpu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gpus_lists_without_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policy.toml");
    let (code, stdout, stderr) = labgpu(&["gpus", "--policy", missing.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("INDEX"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "note: no policy found at {}, so no owners are shown",
            missing.display()
        )),
        "{stdout}"
    );
    let (code, json, _) = labgpu(&["gpus", "--json", "--policy", missing.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["policy"], serde_json::Value::Null, "{json}");
    assert!(v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["owners"].as_array().unwrap().is_empty()));
}

#[test]
fn missing_policy_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policy.toml");
    let (code, _, stderr) = labgpu(&["slurm", "job", "1", "--policy", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "labgpu: cannot read policy file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn inventory_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let dev = dir.path().join("no-such-dev");
    std::fs::write(
        &policy,
        format!("version = 1\n[gpus]\ndev_root = \"{}\"\n", dev.display()),
    )
    .unwrap();
    let (code, _, stderr) = labgpu(&["gpus", "--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cannot scan GPU device directory {}",
            dev.display()
        )),
        "{stderr}"
    );
}
