//! A request line as a policy user can send it: method, path, query string and Content-Type
//! values, one per line of the input (`POST\n/v1.41/build\nt=alice%2Fx\napplication/x-tar`).
//! Through everything the proxy decides from them before any body is read: the endpoint
//! table, the owner filter of listings, build, import, prune, commit and archive options,
//! image names and the caller's name prefixes, and the form-body check.
#![no_main]

use hyper::Method;
use labgpu::proxy::archive;
use labgpu::proxy::images::{self, is_under, names};
use labgpu::proxy::request::{
    check_content_types, merge_owner_filter, query_param, query_string, set_query_param,
};
use labgpu::proxy::routes::{classify, strip_version, Route};
use labgpu::proxy::system::until_of;
use labgpu_fuzz::{user_ctx, OWNER_LABEL};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let query = lines.next();
    let content_types: Vec<&str> = lines.collect();

    if let Ok(method) = Method::from_bytes(method.as_bytes()) {
        route(&method, path);
    }
    let _ = check_content_types(content_types.iter().copied());
    listing(query);
    options(query);
    image_names(path);
    image_names(query.unwrap_or_default());
});

fn route(method: &Method, path: &str) {
    // server.rs slices the version prefix off by length.
    let rest = strip_version(path);
    assert!(path.ends_with(rest), "{path:?} does not end with {rest:?}");
    let _ = path[..path.len() - rest.len()].len();
    let Ok(route) = classify(method, path) else {
        return;
    };
    // What Docker's router would decode or clean differently never gets a route.
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    assert!(
        rest.starts_with('/')
            && !rest.contains(['%', '\\'])
            && segments
                .iter()
                .all(|s| !s.is_empty() && *s != "." && *s != ".."),
        "{method} {path:?} classified as {route:?}"
    );
    if let Route::Container { id, .. } | Route::Exec { id } = &route {
        assert!(!id.is_empty() && !id.contains('/'), "{path:?}: id {id:?}");
    }
}

/// `ps`, `events`: whatever filters the caller sent, the answer is narrowed to their label.
fn listing(query: Option<&str>) {
    let Ok(q) = merge_owner_filter(query, OWNER_LABEL, "alice") else {
        return;
    };
    let filters = query_param(Some(&q), "filters").expect("merged filters are in the query");
    let v: Value = serde_json::from_str(&filters).expect("merged filters are JSON");
    let wanted = format!("{OWNER_LABEL}=alice");
    let has = match v.get("label") {
        Some(Value::Object(m)) => m.get(&wanted) == Some(&Value::Bool(true)),
        Some(Value::Array(a)) => a.contains(&Value::String(wanted)),
        _ => false,
    };
    assert!(has, "owner filter missing from {q:?} (from {query:?})");
    let n = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == "filters")
        .count();
    assert_eq!(n, 1, "{n} filters parameters in {q:?}");
}

fn options(query: Option<&str>) {
    let ctx = user_ctx();
    let _ = images::check_build(query, &ctx);
    let _ = images::check_create(query, &ctx.image_prefixes);
    let _ = images::check_prune(query);
    let _ = images::check_changes(query, OWNER_LABEL);
    if archive::check_query(query).is_ok() {
        let q = set_query_param(query, "noOverwriteDirNonDir", "true");
        assert_eq!(
            query_param(Some(&q), "noOverwriteDirNonDir").as_deref(),
            Some("true")
        );
    }
    if let Some(filters) = query_param(query, "filters") {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&filters) {
            if let Some(until) = m.get("until") {
                let _ = until_of(until);
            }
        }
    }
    let pairs = labgpu::proxy::request::query_pairs(query);
    let _ = query_string(&pairs);
}

/// Image names as tag, build -t, commit, import and load read them.
fn image_names(s: &str) {
    let ctx = user_ctx();
    for name in std::iter::once(s).chain(s.split(['&', '=', '/'])) {
        if let Some(r) = names::parse(name) {
            assert!(
                r.repository.contains('/'),
                "{name:?} parsed to a repository without a domain: {r:?}"
            );
        }
        if is_under(name, &ctx.image_prefixes) {
            let r = names::parse(name).expect("a name under a prefix parses");
            assert!(
                r.repository.starts_with("docker.io/alice/")
                    || r.repository.starts_with("localhost/alice/"),
                "{name:?} is under alice's prefixes but is {r:?}"
            );
        }
    }
    // An administrator's template: anything goes, nothing panics.
    let _ = images::prefixes(s, "alice");
}
