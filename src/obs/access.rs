//! The access log (`[[service]] access_log = PATH`): one line per closed connection, in the
//! process's log format (text `key=value` or JSON).
//!
//! Each worker appends to the file through its own buffer: lines collect in memory and go
//! out in one `write` (O_APPEND, so workers' writes never interleave inside a line) once
//! 16 KiB have gathered, every second, and when the worker's configuration for the service
//! is dropped (reload, shutdown). A reload opens the file again, so rotating it is: move it,
//! then SIGHUP.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LogFormat;

/// Buffered lines are written once this much has gathered.
const FLUSH_AT: usize = 16 * 1024;
/// And at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Opens (creating, mode 0640) `path` for appending.
pub fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// What one access-log line says about a connection.
pub struct Entry<'a> {
    pub conn: &'a dyn std::fmt::Display,
    pub service: &'a str,
    pub route: &'a str,
    pub peer: &'a str,
    pub proxied_by: &'a str,
    pub version: &'a str,
    pub suite: &'a str,
    pub resumed: Option<bool>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub reason: &'a str,
}

/// One worker's access log for one service.
pub struct AccessLog {
    file: File,
    format: LogFormat,
    buf: RefCell<String>,
}

impl AccessLog {
    pub fn new(file: File, format: LogFormat) -> AccessLog {
        AccessLog {
            file,
            format,
            buf: RefCell::new(String::new()),
        }
    }

    pub fn record(&self, e: &Entry<'_>) {
        let mut buf = self.buf.borrow_mut();
        let time = rfc3339(SystemTime::now());
        let resumed = e.resumed.map_or("-", |r| if r { "true" } else { "false" });
        match self.format {
            LogFormat::Text => {
                let _ = writeln!(
                    buf,
                    "time={time} conn={} service={} route={} peer={} proxied_by={} version={} suite={} resumed={resumed} bytes_in={} bytes_out={} duration_ms={} reason={}",
                    e.conn, e.service, e.route, e.peer, e.proxied_by, e.version, e.suite,
                    e.bytes_in, e.bytes_out, e.duration_ms, e.reason
                );
            }
            LogFormat::Json => {
                let line = serde_json::json!({
                    "time": time,
                    "conn": e.conn.to_string(),
                    "service": e.service,
                    "route": e.route,
                    "peer": e.peer,
                    "proxied_by": e.proxied_by,
                    "version": e.version,
                    "suite": e.suite,
                    "resumed": e.resumed,
                    "bytes_in": e.bytes_in,
                    "bytes_out": e.bytes_out,
                    "duration_ms": e.duration_ms,
                    "reason": e.reason,
                });
                let _ = writeln!(buf, "{line}");
            }
        }
        if buf.len() >= FLUSH_AT {
            drop(buf);
            self.flush();
        }
    }

    /// Writes what has gathered (one `write` for all of it).
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            if let Err(e) = (&self.file).write_all(buf.as_bytes()) {
                tracing::warn!(error = %e, "cannot write the access log");
            }
            buf.clear();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `2026-11-23T07:45:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest / 60 % 60,
        rest % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_392_000 + 3_661, 999), "2026-11-23T01:01:01.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }
}
