//! How a refusal reaches the user: one sentence on stderr and, in runc's own format, in the
//! `--log` file, whose last error line containerd's shim turns into
//! "OCI runtime create failed: …".

use std::io::Write;
use std::time::SystemTime;

use crate::argv::Invocation;

pub fn report(inv: &Invocation, sentence: &str) {
    let msg = format!("labgpu: {sentence}");
    let _ = writeln!(std::io::stderr(), "{msg}");
    let Some(log) = &inv.log else { return };
    let line = format_line(inv.log_format.as_deref(), &msg, &rfc3339(SystemTime::now()));
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

/// A runc (logrus) log line: JSON for `--log-format json`, logfmt text otherwise.
pub fn format_line(format: Option<&str>, msg: &str, time: &str) -> String {
    if format == Some("json") {
        let v = serde_json::json!({"level": "error", "msg": msg, "time": time});
        format!("{v}\n")
    } else {
        format!("time={time:?} level=error msg={msg:?}\n")
    }
}

/// UTC RFC 3339 with seconds, from the Unix clock (civil-from-days, no time zone database).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_line_is_what_the_shim_parses() {
        let line = format_line(Some("json"), "labgpu: no \"x\"", "2026-01-01T00:00:00Z");
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "labgpu: no \"x\"");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_795_462_245)), "2026-11-23T19:30:45Z");
    }
}
