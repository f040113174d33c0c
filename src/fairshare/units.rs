//! The policy's fair-share values as an administrator writes them: sizes (`"64g"`), CPU
//! counts (`8`, `0.5`) and host port ranges (`"20000-20099"`).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes: an integer, or a string with a binary suffix as Docker's flags take it
/// (`"512m"`, `"64g"`, `"1.5g"`; b, k, m, g, t; case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let bad = || format!("size {s:?} must be a number of bytes or like \"512m\", \"64g\"");
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
        let (num, shift) = match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 10),
            Some('m') => (&t[..t.len() - 1], 20),
            Some('g') => (&t[..t.len() - 1], 30),
            Some('t') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(bad());
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        let bytes = n * (1u64 << shift) as f64;
        if !(1.0..=(i64::MAX as f64)).contains(&bytes) {
            return Err(bad());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, as an administrator wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) if n > 0 => Ok(ByteSize(n as u64)),
            Raw::Num(n) => Err(serde::de::Error::custom(format!(
                "size {n} must be more than 0"
            ))),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A number of CPUs, as `docker run --cpus` takes it: more than 0, at most 1024, in
/// hundredths (the finest CPUQuota= systemd takes as a percentage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus {
    hundredths: u32,
}

impl Cpus {
    pub fn from_hundredths(hundredths: u32) -> Cpus {
        Cpus { hundredths }
    }

    pub fn hundredths(self) -> u32 {
        self.hundredths
    }

    /// The CFS quota for `period` microseconds.
    pub fn quota(self, period: u64) -> i64 {
        let q = u128::from(period) * u128::from(self.hundredths) / 100;
        // A period no runc accepts must not wrap into a negative ("unlimited") quota.
        i64::try_from(q).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hundredths % 100 {
            0 => write!(f, "{}", self.hundredths / 100),
            r if r % 10 == 0 => write!(f, "{}.{}", self.hundredths / 100, r / 10),
            r => write!(f, "{}.{r:02}", self.hundredths / 100),
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = f64::deserialize(d)?;
        let hundredths = (n * 100.0).round();
        if !(1.0..=102_400.0).contains(&hundredths) {
            return Err(serde::de::Error::custom(format!(
                "cpus = {n} must be between 0.01 and 1024"
            )));
        }
        Ok(Cpus {
            hundredths: hundredths as u32,
        })
    }
}

/// Host ports `start..=end`, written `"20000-20099"` or `"8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad = || format!("port range {s:?} must be \"PORT\" or \"FIRST-LAST\" within 1-65535");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        match (port(a), port(b)) {
            (Some(start), Some(end)) if start <= end => Ok(PortRange { start, end }),
            _ => Err(bad()),
        }
    }

    pub fn contains(&self, other: &PortRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PortRange::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_writes_them() {
        assert_eq!(ByteSize::parse("512m").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("64G").unwrap().0, 64 << 30);
        assert_eq!(ByteSize::parse("1.5g").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("100mb").unwrap().0, 100 << 20);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        for bad in ["", "g", "-1g", "1x", "1e3", "0"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize(64 << 30).to_string(), "64g");
        assert_eq!(ByteSize(3 << 29).to_string(), "1536m");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn cpus_in_hundredths() {
        let c: Cpus = toml::from_str::<toml::Table>("c = 2.5").unwrap()["c"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(c.hundredths(), 250);
        assert_eq!(c.quota(100_000), 250_000);
        assert_eq!(c.quota(u64::MAX), i64::MAX);
        assert_eq!(c.to_string(), "2.5");
        assert_eq!(Cpus::from_hundredths(5).to_string(), "0.05");
        assert_eq!(Cpus::from_hundredths(800).to_string(), "8");
        for bad in ["c = 0", "c = -1", "c = 5000", "c = 0.001"] {
            let v = toml::from_str::<toml::Table>(bad).unwrap()["c"].clone();
            assert!(v.try_into::<Cpus>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        let r = PortRange::parse("20000-20099").unwrap();
        assert_eq!((r.start, r.end), (20000, 20099));
        assert_eq!(PortRange::parse("8080").unwrap().to_string(), "8080");
        assert!(r.contains(&PortRange::parse("20010-20020").unwrap()));
        assert!(!r.contains(&PortRange::parse("20090-20100").unwrap()));
        assert!(r.overlaps(&PortRange::parse("20099-30000").unwrap()));
        assert!(!r.overlaps(&PortRange::parse("20100").unwrap()));
        for bad in ["0", "70000", "20-10", "a-b", "", "1-2-3"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
    }
}
