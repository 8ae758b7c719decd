//! The live view: one line per reporting interval on stderr, rewritten in place on a
//! terminal, plain lines otherwise (logs, CI).

use std::io::{IsTerminal, Write};

use crate::engine::Interval;
use crate::stats::Percentiles;

pub struct Progress {
    tty: bool,
    quiet: bool,
    /// Totals so far, for the "open" count of hold runs.
    ok_total: u64,
    drawn: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            ok_total: 0,
            drawn: false,
        }
    }

    pub fn interval(&mut self, scenario: &str, i: &Interval) {
        self.ok_total += i.sample.counts.ok;
        if self.quiet {
            return;
        }
        let secs = i.to.saturating_sub(i.from).as_secs_f64().max(1e-9);
        let c = &i.sample.counts;
        let p = Percentiles::of(&i.sample.latency);
        let body = match scenario {
            "handshake" => format!(
                "{:>8.0} handshakes/s  resumed {:>5.1}%  p99 {:>8.3} ms",
                c.ok as f64 / secs,
                100.0 * c.resumed as f64 / c.ok.max(1) as f64,
                p.p99
            ),
            "latency" => format!(
                "{:>8.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
                c.ok as f64 / secs,
                p.p50,
                p.p99,
                p.max
            ),
            "throughput" => format!(
                "send {:>8.1} MB/s  recv {:>8.1} MB/s",
                c.sent as f64 / secs / 1e6,
                c.received as f64 / secs / 1e6
            ),
            _ => format!(
                "{:>8} open  (+{}/s)",
                self.ok_total,
                (c.ok as f64 / secs) as u64
            ),
        };
        let tag = if i.warmup { "warm-up" } else { "" };
        let line = format!(
            "[{:>6.1}s{tag}] {body}  errors {}",
            i.to.as_secs_f64(),
            c.errors
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// End the in-place line before the summary is printed.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }

    pub fn reset(&mut self) {
        self.ok_total = 0;
    }
}
