//! The Prometheus text exposition format (version 0.0.4) of a `View`, of `verify`'s
//! findings and of the proxy's refusals. Per-user series carry a `user` label (the policy
//! name); every policy user has a series even at zero, so graphs do not break off.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::View;
use crate::verify::{Audit, Kind, Status};

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the metrics add to a view.
#[derive(Debug, Default)]
pub struct Extra<'a> {
    /// `labgpu verify`'s audit; `Err` with why it could not run.
    pub audit: Option<Result<&'a Audit, String>>,
    /// The proxy's refusals since it started, by reason.
    pub refusals: Option<&'a BTreeMap<String, u64>>,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(view: &View, extra: &Extra) -> String {
    let mut o = Out(String::new());
    gpus(&mut o, view);
    users(&mut o, view);
    let unowned = view.containers.iter().filter(|c| c.owner.is_none()).count();
    o.family(
        "labgpu_unowned_containers",
        "gauge",
        "Running containers with no owner (not created through the proxy, or unlabeled).",
    );
    o.sample("labgpu_unowned_containers", &[], unowned as f64);
    pools(&mut o, view);
    if let Some(audit) = &extra.audit {
        verify(&mut o, audit.as_ref().map(|a| *a));
    }
    if let Some(refusals) = extra.refusals {
        o.family(
            "labgpu_proxy_refusals_total",
            "counter",
            "Requests and connections the proxy refused since it started, by reason.",
        );
        for (reason, n) in refusals {
            o.sample(
                "labgpu_proxy_refusals_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
    }
    o.0
}

/// Pool GPUs busy and free per pool, and the containers `labgpu reclaim` stopped.
fn pools(o: &mut Out, view: &View) {
    if view.pools.is_empty() {
        return;
    }
    let mut per_pool: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for g in &view.pools {
        let e = per_pool.entry(g.pool.as_str()).or_default();
        if g.holders.is_empty() {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    o.family(
        "labgpu_pool_gpus",
        "gauge",
        "GPUs of each pool, by state: busy (held by a container) or free.",
    );
    for (pool, (busy, free)) in per_pool {
        o.sample(
            "labgpu_pool_gpus",
            &[("pool", pool), ("state", "busy")],
            busy as f64,
        );
        o.sample(
            "labgpu_pool_gpus",
            &[("pool", pool), ("state", "free")],
            free as f64,
        );
    }
    o.family(
        "labgpu_pool_reclaims_total",
        "counter",
        "Containers labgpu reclaim stopped to free pool GPUs, by reason (idle, max_runtime).",
    );
    for reason in ["idle", "max_runtime"] {
        let n = view.pool_reclaims.get(reason).copied().unwrap_or(0);
        o.sample(
            "labgpu_pool_reclaims_total",
            &[("reason", reason)],
            n as f64,
        );
    }
}

fn gpus(o: &mut Out, view: &View) {
    o.family(
        "labgpu_nvml_up",
        "gauge",
        "1 when NVML answered (GPU figures present), 0 when it did not.",
    );
    o.sample(
        "labgpu_nvml_up",
        &[],
        f64::from(u8::from(view.gpus.is_some())),
    );
    let Some(gpus) = &view.gpus else { return };
    let name = |g: &super::GpuView| g.minor.to_string();
    o.family(
        "labgpu_gpu_info",
        "gauge",
        "A GPU: its minor, NVML index, UUID and name.",
    );
    for g in gpus {
        let index = g.index.to_string();
        o.sample(
            "labgpu_gpu_info",
            &[
                ("gpu", &name(g)),
                ("index", &index),
                ("uuid", g.uuid.as_deref().unwrap_or("")),
                ("name", g.name.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }
    let each =
        |o: &mut Out, metric: &str, help: &str, f: &dyn Fn(&super::GpuView) -> Option<f64>| {
            o.family(metric, "gauge", help);
            for g in gpus {
                if let Some(v) = f(g) {
                    o.sample(metric, &[("gpu", &name(g))], v);
                }
            }
        };
    each(
        o,
        "labgpu_gpu_utilization_percent",
        "Percent of time a kernel ran on the GPU.",
        &|g| g.utilization_percent.map(f64::from),
    );
    each(
        o,
        "labgpu_gpu_memory_used_bytes",
        "GPU memory in use.",
        &|g| g.memory_used_bytes.map(|b| b as f64),
    );
    each(
        o,
        "labgpu_gpu_memory_total_bytes",
        "GPU memory in all.",
        &|g| g.memory_total_bytes.map(|b| b as f64),
    );
    o.family(
        "labgpu_gpu_user_memory_bytes",
        "gauge",
        "GPU memory held by a user's processes on one GPU.",
    );
    for g in gpus {
        let mut by_user: BTreeMap<&str, u64> = BTreeMap::new();
        for p in &g.processes {
            let owner = p.owner.as_deref().unwrap_or("(unknown)");
            *by_user.entry(owner).or_default() += p.used_bytes.unwrap_or(0);
        }
        for (user, b) in by_user {
            o.sample(
                "labgpu_gpu_user_memory_bytes",
                &[("gpu", &name(g)), ("user", user)],
                b as f64,
            );
        }
    }
}

fn users(o: &mut Out, view: &View) {
    type Get = fn(&super::UserView) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 9] = [
        (
            "labgpu_user_containers",
            "gauge",
            "Running containers a user owns.",
            |u| Some(u.containers as f64),
        ),
        (
            "labgpu_user_cpu_seconds_total",
            "counter",
            "CPU time of a user's running containers.",
            |u| Some(u.cpu_seconds),
        ),
        (
            "labgpu_user_memory_bytes",
            "gauge",
            "Memory of a user's containers, page cache aside.",
            |u| Some(u.memory_bytes as f64),
        ),
        (
            "labgpu_user_pids",
            "gauge",
            "Tasks in a user's containers.",
            |u| Some(u.pids as f64),
        ),
        (
            "labgpu_user_gpu_processes",
            "gauge",
            "A user's compute processes on GPUs.",
            |u| Some(u.gpu_processes as f64),
        ),
        (
            "labgpu_user_gpu_memory_bytes",
            "gauge",
            "GPU memory held by a user's processes.",
            |u| Some(u.gpu_memory_bytes as f64),
        ),
        (
            "labgpu_user_gpu_utilization_percent",
            "gauge",
            "Sum of a user's processes' SM shares (200 is two GPUs' worth).",
            |u| Some(f64::from(u.gpu_sm_percent)),
        ),
        (
            "labgpu_user_cpu_limit_cores",
            "gauge",
            "A user's CPU ceiling, where the policy sets one.",
            |u| u.ceilings.as_ref()?.cpus,
        ),
        (
            "labgpu_user_memory_limit_bytes",
            "gauge",
            "A user's memory ceiling, where the policy sets one.",
            |u| u.ceilings.as_ref()?.memory_bytes.map(|b| b as f64),
        ),
    ];
    let pids_limit: Get = |u| u.ceilings.as_ref()?.pids.map(|p| p as f64);
    let all = series.iter().copied().chain(std::iter::once((
        "labgpu_user_pids_limit",
        "gauge",
        "A user's task ceiling, where the policy sets one.",
        pids_limit,
    )));
    for (metric, kind, help, get) in all {
        let values: Vec<(&str, f64)> = view
            .users
            .iter()
            .filter_map(|u| Some((u.user.as_str(), get(u)?)))
            .collect();
        if values.is_empty() {
            continue;
        }
        o.family(metric, kind, help);
        for (user, v) in values {
            o.sample(metric, &[("user", user)], v);
        }
    }
}

fn verify(o: &mut Out, audit: Result<&Audit, &String>) {
    o.family(
        "labgpu_verify_up",
        "gauge",
        "1 when labgpu verify's audit ran for this scrape, 0 when it could not.",
    );
    let Ok(audit) = audit else {
        o.sample("labgpu_verify_up", &[], 0.0);
        return;
    };
    o.sample("labgpu_verify_up", &[], 1.0);
    o.family(
        "labgpu_verify_findings",
        "gauge",
        "labgpu verify's findings on running containers now, by kind.",
    );
    for kind in Kind::ALL {
        let n = audit
            .containers
            .iter()
            .flat_map(|c| &c.findings)
            .filter(|f| f.kind == kind)
            .count();
        // Stale pool allocations belong to no running container.
        let n = n + if kind == Kind::Pool {
            audit.summary.stale_pool_gpus
        } else {
            0
        };
        o.sample("labgpu_verify_findings", &[("kind", kind.name())], n as f64);
    }
    o.family(
        "labgpu_verify_containers",
        "gauge",
        "Containers labgpu verify audited, by outcome.",
    );
    for (status, name) in [
        (Status::Ok, "ok"),
        (Status::Violation, "violation"),
        (Status::Error, "error"),
        (Status::Stopped, "stopped"),
    ] {
        let n = audit
            .containers
            .iter()
            .filter(|c| c.status == status)
            .count();
        o.sample("labgpu_verify_containers", &[("status", name)], n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::ceilings::Ceilings;
    use crate::top::{GpuProcess, GpuView, UserView};

    fn view() -> View {
        View {
            scope: "all".into(),
            gpus: Some(vec![GpuView {
                minor: 2,
                index: 0,
                uuid: Some("GPU-0002".into()),
                name: Some("Fake \"A\"".into()),
                utilization_percent: Some(40),
                memory_used_bytes: Some(1000),
                memory_total_bytes: None,
                processes: vec![GpuProcess {
                    pid: 1,
                    owner: Some("alice".into()),
                    used_bytes: Some(600),
                    ..GpuProcess::default()
                }],
            }]),
            users: vec![
                UserView {
                    user: "alice".into(),
                    containers: 1,
                    cpu_seconds: 2.5,
                    gpu_memory_bytes: 600,
                    gpu_sm_percent: 40,
                    ..UserView::default()
                },
                UserView {
                    user: "bob".into(),
                    ceilings: Some(Ceilings {
                        pids: Some(100),
                        ..Ceilings::default()
                    }),
                    ..UserView::default()
                },
            ],
            ..View::default()
        }
    }

    /// Each sample line: `name{labels} value`, as a map for lookups.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn per_user_and_per_gpu_series() {
        let mut refusals = BTreeMap::new();
        refusals.insert("privileged".to_string(), 3);
        let text = render(
            &view(),
            &Extra {
                audit: None,
                refusals: Some(&refusals),
            },
        );
        let s = samples(&text);
        assert_eq!(s["labgpu_user_gpu_memory_bytes{user=\"alice\"}"], "600");
        assert_eq!(s["labgpu_user_gpu_memory_bytes{user=\"bob\"}"], "0");
        assert_eq!(
            s["labgpu_user_gpu_utilization_percent{user=\"alice\"}"],
            "40"
        );
        assert_eq!(s["labgpu_user_cpu_seconds_total{user=\"alice\"}"], "2.5");
        assert_eq!(
            s["labgpu_gpu_user_memory_bytes{gpu=\"2\",user=\"alice\"}"],
            "600"
        );
        assert_eq!(s["labgpu_gpu_utilization_percent{gpu=\"2\"}"], "40");
        assert_eq!(s["labgpu_proxy_refusals_total{reason=\"privileged\"}"], "3");
        assert_eq!(s["labgpu_nvml_up"], "1");
        assert!(text.contains("name=\"Fake \\\"A\\\"\""), "{text}");
        // A ceiling is a series only where the policy sets one.
        assert_eq!(s["labgpu_user_pids_limit{user=\"bob\"}"], "100");
        assert!(!text.contains("labgpu_user_pids_limit{user=\"alice\"}"));
        assert!(!text.contains("labgpu_user_memory_limit_bytes"));
        assert!(!text.contains("labgpu_gpu_memory_total_bytes{"));
        assert!(text.contains("# TYPE labgpu_user_cpu_seconds_total counter\n"));
    }

    #[test]
    fn without_nvml_no_gpu_series() {
        let v = View {
            gpus: None,
            ..view()
        };
        let text = render(&v, &Extra::default());
        assert!(text.contains("labgpu_nvml_up 0\n"));
        assert!(!text.contains("labgpu_gpu_"));
        assert!(!text.contains("labgpu_verify_up"));
    }

    #[test]
    fn verify_findings_by_kind_and_a_failed_audit() {
        let text = render(
            &view(),
            &Extra {
                audit: Some(Err("no policy".into())),
                refusals: None,
            },
        );
        assert!(text.contains("labgpu_verify_up 0\n"));
        let finding = |kind| crate::verify::Finding {
            kind,
            detail: String::new(),
        };
        let audit = Audit {
            policy: "/p".into(),
            containers: vec![crate::verify::ContainerAudit {
                id: "c1".into(),
                root: "/run/runc".into(),
                pid: Some(1),
                status: Status::Violation,
                labgpu: false,
                owner: None,
                granted_gpus: vec![],
                reachable_gpus: vec![0],
                findings: vec![finding(Kind::Bypass), finding(Kind::Bypass)],
            }],
            gpu_processes: None,
            stale_pool_gpus: Vec::new(),
            summary: Default::default(),
        };
        let text = render(
            &view(),
            &Extra {
                audit: Some(Ok(&audit)),
                refusals: None,
            },
        );
        let s = samples(&text);
        assert_eq!(s["labgpu_verify_findings{kind=\"bypass\"}"], "2");
        assert_eq!(s["labgpu_verify_findings{kind=\"foreign-gpu\"}"], "0");
        assert_eq!(s["labgpu_verify_containers{status=\"violation\"}"], "1");
    }

    /// config/grafana-dashboard.json is JSON Grafana can import, and every series it graphs
    /// is one `render` writes (a renamed metric would leave a panel empty).
    #[test]
    fn the_shipped_grafana_dashboard_graphs_series_that_exist() {
        let text = include_str!("../../config/grafana-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
        assert_eq!(dash["templating"]["list"][0]["type"], "datasource");
        let mut exprs = Vec::new();
        collect_exprs(&dash, &mut exprs);
        assert!(exprs.len() >= 10, "{exprs:?}");
        let refusals = BTreeMap::from([("privileged".to_string(), 1)]);
        let audit = Audit {
            policy: "/p".into(),
            containers: vec![],
            gpu_processes: None,
            stale_pool_gpus: Vec::new(),
            summary: Default::default(),
        };
        let out = render(
            &view(),
            &Extra {
                audit: Some(Ok(&audit)),
                refusals: Some(&refusals),
            },
        );
        for e in &exprs {
            for name in e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("labgpu_"))
            {
                assert!(
                    out.contains(&format!("# TYPE {name} ")),
                    "the dashboard's {e:?} graphs {name}, which labgpu does not export"
                );
            }
        }
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_string());
                }
                m.values().for_each(|v| collect_exprs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }
}
