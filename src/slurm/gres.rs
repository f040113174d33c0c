//! gres.conf: which device file is which of a node's GPUs. Slurm numbers a node's GPUs (the
//! `IDX` in scontrol's answer) in the order the node's `Name=gpu` lines list their `File=`
//! devices, ranges expanded (`File=/dev/nvidia[0-3]`). Lines with `NodeName=` apply to the
//! nodes it names, lines without it to every node. GPUs that come from `AutoDetect` are
//! numbered by Slurm's detection instead, which labgpu cannot reproduce: such a node is
//! refused.

use std::path::{Path, PathBuf};

use super::hostlist;
use super::SlurmError;

/// This node's GPU device files, Slurm's GPU index being the position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGpus {
    pub files: Vec<PathBuf>,
}

/// Reads `path` for `node`.
pub fn node_gpus(path: &Path, node: &str) -> Result<NodeGpus, SlurmError> {
    let text = std::fs::read_to_string(path).map_err(|e| SlurmError::GresConf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text, node).map_err(|reason| SlurmError::GresConf {
        path: path.to_path_buf(),
        reason,
    })
}

/// The GPUs of `node` in a gres.conf text; the error is the reason, for `SlurmError`.
pub fn parse(text: &str, node: &str) -> Result<NodeGpus, String> {
    let mut files = Vec::new();
    let mut autodetect: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| format!("line {}: {msg}", n + 1);
        let fields = fields(line).map_err(at)?;
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        if fields[0].0.eq_ignore_ascii_case("include") {
            return Err(at(
                "Include is not supported; list the node's GPUs in this file".into(),
            ));
        }
        if let Some(names) = get("NodeName") {
            if !hostlist::contains(names, node).map_err(|e| at(e.to_string()))? {
                continue;
            }
        }
        if let Some(mode) = get("AutoDetect") {
            // A line's own AutoDetect (or a global one) replaces the last one seen.
            autodetect = (!mode.eq_ignore_ascii_case("off")).then(|| mode.to_string());
        }
        if get("Name") != Some("gpu") {
            continue;
        }
        let Some(list) = get("File") else {
            // Count= without File=: GPUs Slurm cannot tie to a device.
            return Err(at(format!(
                "a Name=gpu line for {node} has no File=, so its GPUs are not tied to devices"
            )));
        };
        let expanded = hostlist::expand(list).map_err(|e| at(e.to_string()))?;
        files.extend(expanded.into_iter().map(PathBuf::from));
    }
    if let Some(mode) = autodetect {
        return Err(format!(
            "node {node} has AutoDetect={mode}, which numbers its GPUs by Slurm's own detection; labgpu needs File= lines for every GPU and AutoDetect=off"
        ));
    }
    Ok(NodeGpus { files })
}

/// `Key=value` words; values may be double-quoted.
fn fields(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("{rest:?} is not Key=value"))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("{key:?} is not a gres.conf key"));
        }
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"').ok_or("a quote that does not end")?;
                (&q[..end], &q[end + 1..])
            }
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        out.push((key.to_string(), value.to_string()));
        rest = tail.trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(text: &str, node: &str) -> Vec<String> {
        parse(text, node)
            .unwrap()
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn file_order_ranges_and_node_names() {
        let conf = "# the lab's nodes\n\
            NodeName=gpu[01-02] Name=gpu Type=a100 File=/dev/nvidia[2-3] Cores=0-15\n\
            NodeName=gpu03 Name=gpu File=/dev/nvidia0\n\
            nodename=gpu[01-02] name=gpu file=/dev/nvidia0,/dev/nvidia1   # lower case keys\n\
            Name=mps Count=200 File=/dev/nvidia[0-3]\n";
        assert_eq!(
            files(conf, "gpu02"),
            [
                "/dev/nvidia2",
                "/dev/nvidia3",
                "/dev/nvidia0",
                "/dev/nvidia1"
            ]
        );
        assert_eq!(files(conf, "gpu03"), ["/dev/nvidia0"]);
        assert!(files(conf, "cpu01").is_empty());
        assert_eq!(
            files("Name=gpu File=\"/srv/fake gpus/nvidia0\"\n", "x"),
            ["/srv/fake gpus/nvidia0"]
        );
    }

    #[test]
    fn autodetect_nodes_are_refused() {
        let only = "AutoDetect=nvml\n";
        assert!(parse(only, "n1").unwrap_err().contains("AutoDetect=nvml"));
        let mixed = "NodeName=n1 AutoDetect=nvml\nNodeName=n2 Name=gpu File=/dev/nvidia0\n";
        assert!(parse(mixed, "n1").is_err());
        assert_eq!(files(mixed, "n2"), ["/dev/nvidia0"]);
        let off = "AutoDetect=nvml\nNodeName=n1 AutoDetect=off Name=gpu File=/dev/nvidia0\n";
        assert_eq!(files(off, "n1"), ["/dev/nvidia0"]);
    }

    #[test]
    fn what_cannot_be_mapped_is_refused() {
        for bad in [
            "Name=gpu Count=4\n",
            "Include /etc/slurm/gres.d/x.conf\n",
            "Include=/etc/slurm/more.conf\n",
            "Name=gpu File=/dev/nvidia[0-\n",
            "NodeName=n[1- Name=gpu File=/dev/nvidia0\n",
        ] {
            assert!(parse(bad, "n1").is_err(), "{bad}");
        }
    }
}
