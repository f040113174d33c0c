//! A BuildKit gRPC message as a policy user can send it on `/grpc`: the first byte picks the
//! method (even: Control/Solve, odd: LLBBridge/Solve), the rest is the framed message.
//! Through the proxy's decoding (unknown fields refused) and its build rules; whatever they
//! let through must carry the caller's cache namespace, keep frontend images off and ask
//! for no entitlement but the host network, which this caller may not have.
#![no_main]

use labgpu::proxy::buildkit::rules::{
    check_bridge_solve, check_solve, no_git_policy, DOCKERFILE_FRONTEND,
};
use labgpu::proxy::buildkit::wire::{self, BridgeSolveRequest, SolveRequest};
use labgpu_fuzz::user_ctx;
use libfuzzer_sys::fuzz_target;

const UID: u32 = 1001;

fuzz_target!(|data: &[u8]| {
    let Some((&which, framed)) = data.split_first() else {
        return;
    };
    let Ok(message) = wire::unframe(framed) else {
        return;
    };
    let ctx = user_ctx();
    let ns = format!("labgpu-uid-{UID}");
    if which % 2 == 0 {
        let Ok(m) = wire::decode::<SolveRequest>("SolveRequest", SolveRequest::FIELDS, message)
        else {
            return;
        };
        if let Ok(out) = check_solve(m, &ctx, UID) {
            assert_eq!(out.frontend_attrs["build-arg:BUILDKIT_CACHE_MOUNT_NS"], ns);
            assert!(out.frontend_attrs.contains_key("cmdline"));
            assert!(out.frontend.is_empty() || out.frontend == DOCKERFILE_FRONTEND);
            assert!(out.definition.is_none() && out.frontend_inputs.is_empty());
            assert_eq!(out.source_policy, Some(no_git_policy()));
            assert!(out.entitlements.iter().all(|e| e == "network.host" && ctx.allow_host_network));
            let _ = wire::frame(&out);
        }
    } else {
        let Ok(m) = wire::decode::<BridgeSolveRequest>(
            "frontend SolveRequest",
            BridgeSolveRequest::FIELDS,
            message,
        ) else {
            return;
        };
        if let Ok(out) = check_bridge_solve(m, &ctx, UID) {
            assert_eq!(out.frontend_opt["build-arg:BUILDKIT_CACHE_MOUNT_NS"], ns);
            assert_eq!(out.frontend, DOCKERFILE_FRONTEND);
            assert!(out.definition.is_none() && out.cache_imports.is_empty());
            assert!(out.source_policies.is_empty());
            let _ = wire::frame(&out);
        }
    }
});
