//! Which Docker releases share one default seccomp profile.
//!
//! Docker changed its default profile within release series, not only between them (20.10
//! alone has six), so a generation is named after the first release that shipped it and
//! carries the list of releases, checked tag by tag in moby's history, that ship it.

use std::fmt;

use super::SeccompError;

/// One version of Docker's default seccomp profile, named after the first release with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Generation {
    V20_10_0,
    /// close_range, epoll_pwait2, the new mount API (with CAP_SYS_ADMIN), process_madvise.
    V20_10_4,
    /// clone3: allowed with CAP_SYS_ADMIN, ENOSYS without (so glibc falls back to clone).
    V20_10_10,
    /// futex_waitv, landlock_*, memfd_secret, process_mrelease, mount_setattr, quotactl_fd.
    V20_10_18,
    /// 20.10.22 only: `socket` filtered by argument (no AF_VSOCK); 20.10.23 took it back.
    V20_10_22,
    /// name_to_handle_at without CAP_SYS_ADMIN.
    V20_10_26,
    /// defaultErrnoRet, pkey_*, `socket` without AF_VSOCK, CAP_BPF and CAP_PERFMON rules.
    V23_0_0,
    /// name_to_handle_at without CAP_SYS_ADMIN (again).
    V23_0_7,
    /// Linux 6.x calls (cachestat, fchmodat2, futex2, map_shadow_stack, ...).
    V23_0_10,
    /// io_uring_* no longer allowed; branched before the Linux 6.x calls.
    V25_0_0,
    /// The Linux 6.x calls of 23.0.10, still without io_uring_*.
    V25_0_3,
    /// Linux 6.6–6.13 calls (listmount, statmount, mseal, *xattrat, lsm_*, uretprobe, ...).
    V28_2_0,
    /// 29.4.2 only: `socket` also without AF_ALG (38), and socketcall refused with ENOSYS.
    V29_4_2,
    /// socketcall allowed again; `socket` keeps refusing AF_ALG and AF_VSOCK.
    V29_4_3,
}

/// `(major, minor, first patch, last patch)`: the releases of one generation.
type Releases = &'static [(u32, u32, u32, u32)];

impl Generation {
    /// Every generation, oldest first.
    pub const ALL: [Generation; 14] = [
        Self::V20_10_0,
        Self::V20_10_4,
        Self::V20_10_10,
        Self::V20_10_18,
        Self::V20_10_22,
        Self::V20_10_26,
        Self::V23_0_0,
        Self::V23_0_7,
        Self::V23_0_10,
        Self::V25_0_0,
        Self::V25_0_3,
        Self::V28_2_0,
        Self::V29_4_2,
        Self::V29_4_3,
    ];

    /// The Docker releases (moby tags) whose dockerd resolves this generation's profile.
    pub fn releases(self) -> Releases {
        match self {
            Self::V20_10_0 => &[(20, 10, 0, 3)],
            Self::V20_10_4 => &[(20, 10, 4, 9)],
            Self::V20_10_10 => &[(20, 10, 10, 17)],
            Self::V20_10_18 => &[(20, 10, 18, 21), (20, 10, 23, 25)],
            Self::V20_10_22 => &[(20, 10, 22, 22)],
            Self::V20_10_26 => &[(20, 10, 26, 27)],
            Self::V23_0_0 => &[(23, 0, 0, 6), (24, 0, 0, 2)],
            Self::V23_0_7 => &[(23, 0, 7, 9), (24, 0, 3, 9)],
            Self::V23_0_10 => &[(23, 0, 10, 18)],
            Self::V25_0_0 => &[(25, 0, 0, 2)],
            Self::V25_0_3 => &[
                (25, 0, 3, 17),
                (26, 0, 0, 2),
                (26, 1, 0, 5),
                (27, 0, 1, 3),
                (27, 1, 0, 2),
                (27, 2, 0, 1),
                (27, 3, 0, 1),
                (27, 4, 0, 1),
                (27, 5, 0, 1),
                (28, 0, 0, 4),
                (28, 1, 0, 1),
            ],
            Self::V28_2_0 => &[
                (28, 2, 0, 2),
                (28, 3, 0, 3),
                (28, 4, 0, 0),
                (28, 5, 0, 2),
                (29, 0, 0, 4),
                (29, 1, 0, 5),
                (29, 2, 0, 1),
                (29, 3, 0, 1),
                (29, 4, 0, 1),
            ],
            Self::V29_4_2 => &[(29, 4, 2, 2)],
            Self::V29_4_3 => &[(29, 4, 3, 3), (29, 5, 0, 3), (29, 6, 0, 2), (29, 7, 0, 2)],
        }
    }

    /// Docker 20.10's profile loader knows only defaultAction, architectures, archMap and
    /// syscalls: it drops defaultErrnoRet, flags and listener fields, and writes no
    /// defaultErrnoRet in its own default. 23.0 copies the whole runtime-spec object.
    pub(crate) fn is_20_10(self) -> bool {
        self < Self::V23_0_0
    }

    /// Before 20.10.10 the loader had no per-rule errnoRet either: it was dropped.
    pub(crate) fn keeps_rule_errno(self) -> bool {
        self >= Self::V20_10_10
    }

    /// The generation of a Docker release given as `docker version` prints it
    /// ("20.10.24+dfsg1", "26.1.5"), or of a whole series ("26", "27.5") when every
    /// release of it shares one profile.
    pub fn for_docker_version(version: &str) -> Result<Generation, SeccompError> {
        let wanted = parse_version(version).ok_or_else(|| SeccompError::DockerVersion {
            version: version.to_string(),
            why: "expected MAJOR[.MINOR[.PATCH]] as docker version prints it".into(),
        })?;
        let mut found: Vec<Generation> = Vec::new();
        for g in Self::ALL {
            let matches = g.releases().iter().any(|&(maj, min, lo, hi)| {
                wanted[0] == maj
                    && wanted.get(1).is_none_or(|&m| m == min)
                    && wanted.get(2).is_none_or(|&p| (lo..=hi).contains(&p))
            });
            if matches && !found.contains(&g) {
                found.push(g);
            }
        }
        match found.as_slice() {
            [g] => Ok(*g),
            [] => Err(SeccompError::DockerVersion {
                version: version.to_string(),
                why: "labgpu does not know this release's default seccomp profile".into(),
            }),
            many => Err(SeccompError::DockerVersion {
                version: version.to_string(),
                why: format!(
                    "its releases have {} different default profiles ({}); give the full \
                     version from `docker version --format '{{{{.Server.Version}}}}'`",
                    many.len(),
                    many.iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

impl fmt::Display for Generation {
    /// The releases, as "20.10.18-20.10.21, 20.10.23-20.10.25".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .releases()
            .iter()
            .map(|&(maj, min, lo, hi)| {
                if lo == hi {
                    format!("{maj}.{min}.{lo}")
                } else {
                    format!("{maj}.{min}.{lo}-{maj}.{min}.{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// The leading numeric components of a version ("20.10.24+dfsg1" → [20, 10, 24]).
fn parse_version(version: &str) -> Option<Vec<u32>> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = Vec::new();
    for piece in v.splitn(3, '.') {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        parts.push(digits.parse().ok()?);
        if digits.len() != piece.len() {
            // A suffix ("24+dfsg1", "0-rc1") ends the version.
            break;
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_bookworm_and_trixie_versions() {
        assert_eq!(
            Generation::for_docker_version("20.10.24+dfsg1").unwrap(),
            Generation::V20_10_18
        );
        assert_eq!(
            Generation::for_docker_version("26.1.5+dfsg1").unwrap(),
            Generation::V25_0_3
        );
        assert_eq!(
            Generation::for_docker_version("28.2.2").unwrap(),
            Generation::V28_2_0
        );
    }

    #[test]
    fn a_series_is_enough_when_its_releases_agree() {
        assert_eq!(
            Generation::for_docker_version("26").unwrap(),
            Generation::V25_0_3
        );
        assert_eq!(
            Generation::for_docker_version("27.5").unwrap(),
            Generation::V25_0_3
        );
    }

    #[test]
    fn an_ambiguous_series_names_its_generations() {
        let e = Generation::for_docker_version("20.10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("6 different default profiles"), "{e}");
        assert!(e.contains("20.10.22"), "{e}");
        let e = Generation::for_docker_version("28")
            .unwrap_err()
            .to_string();
        assert!(e.contains("28.2.0"), "{e}");
    }

    #[test]
    fn unknown_and_malformed_versions_are_refused() {
        let e = Generation::for_docker_version("31.0.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not know"), "{e}");
        assert!(Generation::for_docker_version("latest").is_err());
        assert!(Generation::for_docker_version("").is_err());
    }

    #[test]
    fn each_release_belongs_to_one_generation() {
        let mut seen = std::collections::BTreeSet::new();
        for g in Generation::ALL {
            for &(maj, min, lo, hi) in g.releases() {
                for p in lo..=hi {
                    assert!(seen.insert((maj, min, p)), "{maj}.{min}.{p} listed twice");
                }
            }
        }
    }
}
