//! The policy loader: any bytes as /etc/labgpu/policy.toml, then what the runtime and the
//! proxy derive from a policy that loads (each user's decision against a two-GPU inventory,
//! exec's process rules, the proxy's view of the caller, the socket mode, uid lookups), with
//! `[groups.*]` members resolved against fixed account files.
#![no_main]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use labgpu::accounts::Accounts;
use labgpu::decide::{decide_for_user, policy_user, process_rules};
use labgpu::gpu::{DevNode, Gpu, Inventory, Mig};
use labgpu::policy::{CdiSetting, Policy};
use labgpu::proxy::request::user_ctx;
use libfuzzer_sys::fuzz_target;

/// Two GPUs (minors 0 and 1, with UUIDs; GPU 1 split into one MIG instance) and the
/// control nodes, as a devfs-and-NVML inventory would report them.
struct TwoGpus {
    gpus: Vec<Gpu>,
    control: Vec<DevNode>,
    majors: BTreeSet<i64>,
}

impl TwoGpus {
    fn new() -> Self {
        let dev = Path::new("/nonexistent/dev");
        let mut gpus: Vec<Gpu> = (0..2)
            .map(|m| {
                let mut g = Gpu::new(m, DevNode::new(&format!("nvidia{m}"), dev, 195, m.into()));
                g.uuid = Some(format!("GPU-0000000{m}-0000-0000-0000-000000000000"));
                g
            })
            .collect();
        gpus[1].migs.push(Mig {
            gi: 1,
            ci: Some(0),
            uuid: Some("MIG-00000001-0000-0000-0000-000000000000".into()),
            cap: DevNode::new("nvidia-caps/nvidia-cap12", dev, 510, 12),
        });
        TwoGpus {
            gpus,
            control: vec![DevNode::new("nvidiactl", dev, 195, 255)],
            majors: BTreeSet::from([195, 510, 511]),
        }
    }
}

impl Inventory for TwoGpus {
    fn source_name(&self) -> &str {
        "fuzz"
    }
    fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }
    fn control_nodes(&self) -> &[DevNode] {
        &self.control
    }
    fn nvidia_majors(&self) -> &BTreeSet<i64> {
        &self.majors
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut policy) = Policy::parse(Path::new("/etc/labgpu/policy.toml"), data) else {
        return;
    };
    // Members of `[groups.*]` tables as a host's account files would make them.
    let accounts = Accounts::parse(
        "root:x:0:0::/root:/bin/sh\nalice:x:1001:3000::/home/alice:/bin/sh\n",
        "root:x:0:\nml:x:3000:bob,root\nvision:x:3001:alice,bob\n",
    );
    if policy.apply_groups(&accounts).is_err() {
        return;
    }
    // The CDI spec is a file the administrator points at; reading it is not the loader's.
    policy.gpus.cdi_spec = CdiSetting::Off;
    let _ = policy.proxy_or_default().mode();
    let inventory = TwoGpus::new();
    let names: Vec<String> = policy.users.keys().cloned().collect();
    for name in names.iter().map(Some).chain([None]) {
        let owner = name.map(String::as_str);
        let Ok(user) = policy_user(&policy, owner) else {
            continue;
        };
        let _ = process_rules(&policy, owner, user);
        let _ = decide_for_user(
            &policy,
            owner,
            user,
            &inventory,
            PathBuf::from("/var/lib/docker"),
            "cid",
        );
        if let Some(owner) = owner {
            let ctx = user_ctx(&policy, owner);
            assert_eq!(ctx.name, owner);
        }
    }
    for uid in [0, 1000, 1001, u32::MAX] {
        let _ = policy.user_for_uid(uid, Some("alice"));
    }
});
