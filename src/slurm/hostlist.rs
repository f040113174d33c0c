//! Slurm's bracket lists: `node[01-03,7]`, `gpu-[1-2]-[a]`, `/dev/nvidia[0-3]`, and plain
//! comma lists of them. Used for `Nodes=` in scontrol's answer and `NodeName=`/`File=` in
//! gres.conf.

/// More names than any real cluster or GPU node has: a list that expands further is refused
/// rather than allocated.
const MAX_NAMES: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{list:?} is not a valid Slurm name list: {reason}")]
pub struct HostlistError {
    pub list: String,
    pub reason: String,
}

/// Every name `list` stands for, in Slurm's order.
pub fn expand(list: &str) -> Result<Vec<String>, HostlistError> {
    let err = |reason: &str| HostlistError {
        list: list.to_string(),
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    for item in split_top(list).map_err(|r| err(&r))? {
        if item.is_empty() {
            return Err(err("an empty name"));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            let (prefix, group, tail) = match rest.find('[') {
                Some(open) => {
                    let close = rest[open..]
                        .find(']')
                        .map(|c| open + c)
                        .ok_or_else(|| err("a '[' without ']'"))?;
                    (
                        &rest[..open],
                        Some(&rest[open + 1..close]),
                        &rest[close + 1..],
                    )
                }
                None => (rest, None, ""),
            };
            if prefix.contains(']') {
                return Err(err("a ']' without '['"));
            }
            let suffixes = match group {
                Some(g) => expand_group(g).map_err(|r| err(&r))?,
                None => vec![String::new()],
            };
            if names.len() * suffixes.len() + out.len() > MAX_NAMES {
                return Err(err(&format!("it names more than {MAX_NAMES}")));
            }
            names = names
                .iter()
                .flat_map(|n| suffixes.iter().map(move |s| format!("{n}{prefix}{s}")))
                .collect();
            rest = tail;
        }
        out.extend(names);
    }
    Ok(out)
}

/// Whether `name` is one of the names `list` stands for.
pub fn contains(list: &str, name: &str) -> Result<bool, HostlistError> {
    Ok(expand(list)?.iter().any(|n| n == name))
}

/// Splits at commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err("nested '['".into()),
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or("a ']' without '['")?,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// `01-03,7` → 01 02 03 7: a range keeps the width of its first number (zero padding).
fn expand_group(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in group.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("[{group}] holds {part:?}, not a number or a range"));
        }
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| format!("{lo} is too large"))?,
            hi.parse().map_err(|_| format!("{hi} is too large"))?,
        );
        if b < a {
            return Err(format!("range {part} runs backwards"));
        }
        if b - a >= MAX_NAMES as u64 || out.len() as u64 + (b - a) >= MAX_NAMES as u64 {
            return Err(format!("it names more than {MAX_NAMES}"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ranges_and_padding() {
        assert_eq!(expand("vm").unwrap(), ["vm"]);
        assert_eq!(
            expand("node[01-03,7],gpu5").unwrap(),
            ["node01", "node02", "node03", "node7", "gpu5"]
        );
        assert_eq!(
            expand("r[1-2]-n[8-9]").unwrap(),
            ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
        );
        assert_eq!(
            expand("/dev/nvidia[2-3],/dev/nvidia0").unwrap(),
            ["/dev/nvidia2", "/dev/nvidia3", "/dev/nvidia0"]
        );
        assert_eq!(expand("n[9-11]").unwrap(), ["n9", "n10", "n11"]);
        assert!(contains("gpu[01-16]", "gpu07").unwrap());
        assert!(!contains("gpu[01-16]", "gpu7").unwrap());
    }

    #[test]
    fn malformed_and_huge_lists_are_refused() {
        for bad in [
            "n[1-",
            "n]1",
            "n[a-b]",
            "n[3-1]",
            "n[[1]]",
            "a,,b",
            "",
            "n[1-99999999]",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
        assert!(expand("a[0-255]b[0-255]c[0-1]").is_err());
    }
}
