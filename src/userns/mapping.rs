//! The id mappings of an owner's user namespace, as runc writes them to `uid_map` and
//! `gid_map`, and as the idmapped layers use them: container root is the owner, container ids
//! 1-65535 are the owner's subordinate range, and the owner's supplementary groups keep their
//! host gid inside (a "hole" in the subordinate gid range), so group-shared directories stay
//! reachable.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

/// Container ids 0..=65535 are mapped: 0 to the owner, the rest to the subordinate range.
pub const CONTAINER_IDS: u32 = 65536;

/// Subordinate ids one owner needs (container ids 1-65535).
pub const SUBORDINATE_IDS: u32 = CONTAINER_IDS - 1;

/// The kernel accepts at most this many lines in `uid_map`/`gid_map` (Linux >= 4.15).
pub const MAX_LINES: usize = 340;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    pub uid: Vec<LinuxIdMapping>,
    pub gid: Vec<LinuxIdMapping>,
}

fn line(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(container)
        .host_id(host)
        .size(size)
        .build()
        .expect("every field is set")
}

/// uid: `0 owner 1`, `1 sub 65535`.
pub fn uid_map(owner_uid: u32, sub_start: u32) -> Vec<LinuxIdMapping> {
    vec![line(0, owner_uid, 1), line(1, sub_start, SUBORDINATE_IDS)]
}

/// gid: `0 owner 1`, the subordinate range split around each supplementary gid below
/// 65536, and each supplementary gid as `g g 1`. Container gid `c` (not a hole) is always
/// `sub_start + c - 1`, so a gid's host id never depends on the owner's groups.
pub fn gid_map(owner_gid: u32, sub_start: u32, extra: &[u32]) -> Vec<LinuxIdMapping> {
    let mut holes: Vec<u32> = extra
        .iter()
        .copied()
        .filter(|g| *g != 0 && *g != owner_gid)
        .collect();
    holes.sort_unstable();
    holes.dedup();
    let mut map = vec![line(0, owner_gid, 1)];
    let mut next = 1u32;
    for &g in holes.iter().filter(|g| **g < CONTAINER_IDS) {
        if g > next {
            map.push(line(next, sub_start + (next - 1), g - next));
        }
        next = g + 1;
    }
    if next < CONTAINER_IDS {
        map.push(line(next, sub_start + (next - 1), CONTAINER_IDS - next));
    }
    map.extend(holes.iter().map(|&g| line(g, g, 1)));
    map
}

/// The host id container id `id` maps to, if any.
pub fn to_host(map: &[LinuxIdMapping], id: u32) -> Option<u32> {
    map.iter().find_map(|m| {
        let offset = id.checked_sub(m.container_id())?;
        (offset < m.size()).then(|| m.host_id() + offset)
    })
}

/// The text the kernel shows in `/proc/<pid>/uid_map` (and accepts when written), one
/// `container host size` line per mapping, in order.
pub fn proc_text(map: &[LinuxIdMapping]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// `/proc/<pid>/uid_map` as mappings, whatever its column padding.
pub fn parse_proc(text: &str) -> Option<Vec<LinuxIdMapping>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            match (f.next(), f.next(), f.next(), f.next()) {
                (Some(Ok(c)), Some(Ok(h)), Some(Ok(s)), None) => Some(line(c, h, s)),
                _ => None,
            }
        })
        .collect()
}

/// Whether `map` is the initial user namespace's identity mapping (no user namespace).
pub fn is_identity(map: &[LinuxIdMapping]) -> bool {
    matches!(map, [m] if m.container_id() == 0 && m.host_id() == 0 && m.size() == u32::MAX)
}

/// Host ids the mapping covers, as half-open ranges.
pub fn host_ranges(map: &[LinuxIdMapping]) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
    map.iter()
        .map(|m| u64::from(m.host_id())..u64::from(m.host_id()) + u64::from(m.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(map: &[LinuxIdMapping]) -> String {
        proc_text(map)
    }

    #[test]
    fn uid_map_is_owner_then_range() {
        assert_eq!(text(&uid_map(1001, 100000)), "0 1001 1\n1 100000 65535\n");
    }

    #[test]
    fn supplementary_gids_punch_holes_and_map_to_themselves() {
        let map = gid_map(1001, 100000, &[1001, 27, 5000, 70000, 27, 0]);
        assert_eq!(
            text(&map),
            "0 1001 1\n1 100000 26\n28 100027 4972\n5001 105000 60535\n27 27 1\n5000 5000 1\n70000 70000 1\n"
        );
        // Container gid 28 is the same host gid with or without the hole at 27.
        assert_eq!(to_host(&map, 28), to_host(&gid_map(1001, 100000, &[]), 28));
        assert_eq!(to_host(&map, 27), Some(27));
        assert_eq!(to_host(&map, 0), Some(1001));
        assert_eq!(to_host(&map, 65535), Some(165534));
        assert_eq!(to_host(&map, 65536), None);
        // Every container id 0..65536 is mapped exactly once.
        let covered: u64 = map
            .iter()
            .filter(|m| m.container_id() < CONTAINER_IDS)
            .map(|m| u64::from(m.size()))
            .sum();
        assert_eq!(covered, u64::from(CONTAINER_IDS));
    }

    #[test]
    fn edge_holes() {
        assert_eq!(
            text(&gid_map(5, 200000, &[1, 65535])),
            "0 5 1\n2 200001 65533\n1 1 1\n65535 65535 1\n"
        );
    }

    #[test]
    fn proc_text_round_trips_with_kernel_padding() {
        let map =
            parse_proc("         0       1001          1\n         1     100000      65535\n")
                .unwrap();
        assert_eq!(map, uid_map(1001, 100000));
        assert!(is_identity(&parse_proc("0 0 4294967295\n").unwrap()));
        assert!(!is_identity(&map));
        assert!(parse_proc("0 x 1\n").is_none());
    }
}
