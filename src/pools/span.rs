//! A length of time in the policy: `"90s"`, `"30m"`, `"2h"`, `"1d"`, or parts of them run
//! together (`"1h30m"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn secs(&self) -> u64 {
        self.0.as_secs()
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        if s == 0 {
            return f.write_str("0s");
        }
        for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= n {
                write!(f, "{}{unit}", s / n)?;
                s %= n;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} must be a time such as \"90s\", \"30m\", \"2h\" or \"1d\"");
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        if !digits.is_empty() || total == 0 {
            return Err(bad());
        }
        Ok(Span(Duration::from_secs(total)))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_in_every_unit_and_together() {
        let secs = |s: &str| s.parse::<Span>().map(|s| s.secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("30m"), Ok(1800));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("1d"), Ok(86400));
        assert_eq!(secs("1h30m"), Ok(5400));
        for bad in [
            "",
            "2",
            "h",
            "0h",
            "2 h",
            "-1h",
            "2w",
            "99999999999999999999d",
        ] {
            assert!(secs(bad).is_err(), "{bad}");
        }
        assert_eq!("1h30m".parse::<Span>().unwrap().to_string(), "1h30m");
        assert_eq!("120m".parse::<Span>().unwrap().to_string(), "2h");
    }
}
