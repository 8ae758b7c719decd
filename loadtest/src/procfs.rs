//! What /proc says about a process: CPU time, resident memory, open fds. Used for this
//! client's own CPU and for the target's (`--pid`).

use std::fs;

use anyhow::Context;
use serde::Serialize;

/// A process to watch: `None` is this one.
#[derive(Clone, Copy, Debug)]
pub struct Proc(pub Option<u32>);

#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
}

impl Proc {
    fn path(&self, what: &str) -> String {
        match self.0 {
            Some(pid) => format!("/proc/{pid}/{what}"),
            None => format!("/proc/self/{what}"),
        }
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = self.path("stat");
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the parenthesised command name (which may contain spaces):
        // state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields.get(i - 3).context("short stat")?.parse::<u64>()? as f64)
        };
        let hz = rustix::param::clock_ticks_per_second() as f64;
        Ok((ticks(14)? + ticks(15)?) / hz)
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let path = self.path("status");
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .context("no VmRSS")?;
        let fd_dir = self.path("fd");
        let fds = fs::read_dir(&fd_dir)
            .with_context(|| format!("listing {fd_dir}"))?
            .count() as u64;
        Ok(ProcSample {
            cpu_s: self.cpu_seconds()?,
            rss_bytes: rss_kb * 1024,
            fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable_and_grows() {
        let me = Proc(None);
        let before = me.sample().unwrap();
        assert!(before.rss_bytes > 0 && before.fds >= 3);
        let files: Vec<_> = (0..10)
            .map(|_| fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let after = me.sample().unwrap();
        assert!(after.fds >= before.fds + 10, "{before:?} {after:?}");
        drop(files);
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(me.cpu_seconds().unwrap() > before.cpu_s);
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(Proc(Some(u32::MAX - 1)).sample().is_err());
    }
}
