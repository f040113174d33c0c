//! `labgpu top`'s screen: the GPUs with each process's owner and container, then each
//! user's usage (against their ceilings where the policy sets them).

use std::fmt::Write;

use super::{GpuView, UserView, View};

/// The whole screen for `view` (plain text, one line per row, no terminal codes).
pub fn screen(view: &View) -> String {
    let mut out = String::new();
    let scope = if view.scope == "all" {
        "all users".to_string()
    } else {
        format!("user {}", view.scope)
    };
    let _ = writeln!(
        out,
        "labgpu top: {scope}, {} UTC",
        clock(view.taken_at_ms / 1000)
    );
    out.push('\n');
    gpus(&mut out, view);
    pools(&mut out, view);
    out.push('\n');
    users(&mut out, &view.users);
    if !view.containers.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>6} {:>10} {:>5} GPUS",
            "CONTAINER", "OWNER", "CPU", "MEMORY", "PIDS"
        );
        for c in &view.containers {
            let _ = writeln!(
                out,
                "{:<14} {:<10} {:>6} {:>10} {:>5} {}",
                short(&c.id),
                c.owner.as_deref().unwrap_or("(unowned)"),
                c.cpu_cores.map_or("-".into(), percent_of_cores),
                c.usage.memory_bytes.map_or("-".into(), bytes),
                c.usage.pids.map_or("-".into(), |p| p.to_string()),
                list(&c.gpus)
            );
        }
    }
    out
}

fn gpus(out: &mut String, view: &View) {
    let Some(gpus) = &view.gpus else {
        let why = view.gpu_error.as_deref().unwrap_or("no answer");
        let _ = writeln!(out, "GPUs: no figures (NVML: {why})");
        return;
    };
    let _ = writeln!(
        out,
        "{:<4} {:>5} {:>17}  {:>7} {:<10} {:<13} {:>9} {:>4} COMMAND",
        "GPU", "UTIL", "MEMORY", "PID", "USER", "CONTAINER", "GPU-MEM", "SM"
    );
    for g in gpus {
        let head = gpu_head(g);
        if g.processes.is_empty() {
            let _ = writeln!(out, "{head}  {:>7} (no processes)", "-");
        }
        for (i, p) in g.processes.iter().enumerate() {
            let lead = if i == 0 {
                head.clone()
            } else {
                " ".repeat(head.len())
            };
            let _ = writeln!(
                out,
                "{lead}  {:>7} {:<10} {:<13} {:>9} {:>4} {}",
                p.pid,
                p.owner.as_deref().unwrap_or("(unknown)"),
                p.container.as_deref().map_or("(host)".into(), short),
                p.used_bytes.map_or("-".into(), bytes),
                p.sm_percent.map_or("-".into(), |s| format!("{s}%")),
                p.command.as_deref().unwrap_or("")
            );
        }
    }
}

/// One line per pool GPU: free, or busy with who holds it.
fn pools(out: &mut String, view: &View) {
    if view.pools.is_empty() {
        return;
    }
    out.push('\n');
    let _ = writeln!(out, "{:<10} {:<20} {:<5} HOLDERS", "POOL", "GPU", "STATE");
    for g in &view.pools {
        let holders: Vec<String> = g
            .holders
            .iter()
            .map(|h| match h.container.as_str() {
                "" => h.owner.clone(),
                c => format!("{} {}", h.owner, short(c)),
            })
            .collect();
        let state = if holders.is_empty() { "free" } else { "busy" };
        let gpu = match g.minor {
            Some(m) if m.to_string() != g.gpu => format!("{} (minor {m})", g.gpu),
            _ => g.gpu.clone(),
        };
        let _ = writeln!(
            out,
            "{:<10} {gpu:<20} {state:<5} {}",
            g.pool,
            if holders.is_empty() {
                "-".to_string()
            } else {
                holders.join(", ")
            }
        );
    }
}

fn gpu_head(g: &GpuView) -> String {
    let memory = match (g.memory_used_bytes, g.memory_total_bytes) {
        (Some(u), Some(t)) => format!("{}/{}", bytes(u), bytes(t)),
        (None, Some(t)) => format!("-/{}", bytes(t)),
        _ => "-".into(),
    };
    format!(
        "{:<4} {:>5} {memory:>17}",
        g.minor,
        g.utilization_percent
            .map_or("-".into(), |u| format!("{u}%"))
    )
}

fn users(out: &mut String, users: &[UserView]) {
    let _ = writeln!(
        out,
        "{:<10} {:>5} {:>12} {:>21} {:>11} {:>5} {:>10} {:>6}",
        "USER", "CTRS", "CPU", "MEMORY", "PIDS", "GPU-P", "GPU-MEM", "GPU-SM"
    );
    for u in users {
        let c = u.ceilings.clone().unwrap_or_default();
        let cpu = against(
            u.cpu_cores.map_or("-".into(), percent_of_cores),
            c.cpus.map(percent_of_cores),
        );
        let mem = against(bytes(u.memory_bytes), c.memory_bytes.map(bytes));
        let pids = against(u.pids.to_string(), c.pids.map(|p| p.to_string()));
        let _ = writeln!(
            out,
            "{:<10} {:>5} {cpu:>12} {mem:>21} {pids:>11} {:>5} {:>10} {:>5}%",
            u.user,
            u.containers,
            u.gpu_processes,
            bytes(u.gpu_memory_bytes),
            u.gpu_sm_percent
        );
    }
}

/// `used/ceiling`, or `used` alone where there is no ceiling.
fn against(used: String, ceiling: Option<String>) -> String {
    match ceiling {
        Some(c) => format!("{used}/{c}"),
        None => used,
    }
}

/// Cores as `top` shows them: 100% is one core.
fn percent_of_cores(cores: f64) -> String {
    format!("{:.0}%", cores * 100.0)
}

pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn list(minors: &[u32]) -> String {
    if minors.is_empty() {
        return "-".into();
    }
    minors
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// HH:MM:SS of a Unix time.
fn clock(secs: u64) -> String {
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::ceilings::Ceilings;
    use crate::top::GpuProcess;

    fn view() -> View {
        View {
            scope: "all".into(),
            taken_at_ms: 3_723_000,
            gpus: Some(vec![
                GpuView {
                    index: 0,
                    minor: 0,
                    utilization_percent: Some(40),
                    memory_used_bytes: Some(3 << 30),
                    memory_total_bytes: Some(16 << 30),
                    processes: vec![
                        GpuProcess {
                            pid: 4242,
                            owner: Some("alice".into()),
                            container: Some("0123456789abcdef".into()),
                            command: Some("python".into()),
                            used_bytes: Some(1 << 30),
                            sm_percent: Some(40),
                            ..GpuProcess::default()
                        },
                        GpuProcess {
                            pid: 77,
                            owner: None,
                            container: None,
                            ..GpuProcess::default()
                        },
                    ],
                    ..GpuView::default()
                },
                GpuView {
                    minor: 1,
                    index: 1,
                    ..GpuView::default()
                },
            ]),
            users: vec![UserView {
                user: "alice".into(),
                containers: 1,
                cpu_cores: Some(0.5),
                memory_bytes: 512 << 20,
                pids: 3,
                ceilings: Some(Ceilings {
                    memory_bytes: Some(2 << 30),
                    ..Ceilings::default()
                }),
                ..UserView::default()
            }],
            ..View::default()
        }
    }

    #[test]
    fn each_gpu_process_has_its_owner_and_container_on_its_row() {
        let s = screen(&view());
        let row = s.lines().find(|l| l.contains("4242")).unwrap();
        assert!(row.starts_with("0 "), "{row}");
        assert!(row.contains("alice"), "{row}");
        assert!(row.contains("0123456789ab "), "{row}");
        assert!(row.contains("1.0GiB"), "{row}");
        assert!(row.contains("3.0GiB/16.0GiB"), "{row}");
        let host = s.lines().find(|l| l.contains(" 77 ")).unwrap();
        assert!(
            host.contains("(unknown)") && host.contains("(host)"),
            "{host}"
        );
        let idle = s.lines().find(|l| l.starts_with("1 ")).unwrap();
        assert!(idle.contains("(no processes)"), "{idle}");
        assert!(s.starts_with("labgpu top: all users, 01:02:03 UTC"), "{s}");
    }

    #[test]
    fn usage_is_shown_against_a_ceiling_only_where_there_is_one() {
        let s = screen(&view());
        let row = s.lines().find(|l| l.starts_with("alice ")).unwrap();
        assert!(row.contains("512.0MiB/2.0GiB"), "{row}");
        assert!(row.contains(" 50% "), "{row}");
        assert!(!row.contains("50%/"), "{row}");
    }

    #[test]
    fn without_nvml_the_reason_is_shown() {
        let v = View {
            gpu_error: Some("libnvidia-ml.so.1: not found".into()),
            ..View::default()
        };
        assert!(screen(&v).contains("GPUs: no figures (NVML: libnvidia-ml.so.1: not found)"));
    }
}
