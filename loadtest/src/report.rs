//! A run's results: the JSON document (`--json`) and the summary table.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::procfs::ProcSample;
use crate::stats::{Counts, Percentiles};
use crate::tls::Negotiated;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// handshake, throughput, latency, hold, ramp.
    pub scenario: String,
    pub target: String,
    /// Plain TCP, TLS verified against a CA, or TLS with verification off.
    pub transport: String,
    /// What the handshakes settled on (from the first one per thread; all alike in practice).
    pub negotiated: Option<Negotiated>,
    /// The scenario's settings as given (rate, size, streams, ...).
    pub settings: BTreeMap<String, String>,
    pub threads: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    pub counts: Counts,
    pub rates: Rates,
    /// Open model: from the intended start. Closed loop: same as `service`.
    pub latency: Option<Percentiles>,
    /// From the actual start of each operation.
    pub service: Option<Percentiles>,
    pub errors: BTreeMap<String, u64>,
    /// First full message per error reason.
    pub error_details: BTreeMap<String, String>,
    pub client_cpu_s: f64,
    /// The target's CPU over the window (`--pid`).
    pub target_cpu_s: Option<f64>,
    pub hold: Option<HoldReport>,
    pub ramp: Option<RampReport>,
    pub intervals: Vec<IntervalRow>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// Why the run counts as failed (errors over budget, aborted), if it does.
    pub failed: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rates {
    /// Completed operations per second (handshakes, requests, connections opened).
    pub ops_per_s: f64,
    /// Share of handshakes that resumed a session.
    pub resumed_share: f64,
    pub sent_mb_s: f64,
    pub received_mb_s: f64,
    /// Operations per target CPU-second (`--pid`).
    pub ops_per_target_cpu_s: Option<f64>,
    /// MB moved (both ways) per target CPU-second (`--pid`).
    pub mb_per_target_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IntervalRow {
    /// End of the interval, seconds from the start of the measured window.
    pub t_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub sent: u64,
    pub received: u64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldReport {
    pub requested: usize,
    /// Connections open at the last sample.
    pub open: u64,
    pub before: Option<ProcSample>,
    /// The target with every connection open.
    pub after: Option<ProcSample>,
    pub rss_bytes_per_conn: Option<f64>,
    pub fds_per_conn: Option<f64>,
    /// Why no per-connection figures, if none.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RampReport {
    /// "connections" or "requests" per second.
    pub unit: String,
    pub slo_p99_ms: f64,
    pub error_budget: f64,
    pub steps: Vec<RampStep>,
    /// Highest offered rate that met the SLO and the error budget.
    pub sustainable: Option<f64>,
    /// Why the ramp stopped.
    pub stop: String,
    /// Counts over all steps.
    pub total: Counts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RampStep {
    pub offered: f64,
    pub achieved: f64,
    pub p99_ms: f64,
    pub error_share: f64,
    pub ok: bool,
}

impl Report {
    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The summary table.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{} against {} ({})",
            self.scenario, self.target, self.transport
        )?;
        if let Some(n) = &self.negotiated {
            write!(out, "  negotiated   {} {} {}", n.version, n.suite, n.group)?;
            match &n.alpn {
                Some(a) => writeln!(out, " alpn={a}")?,
                None => writeln!(out)?,
            }
        }
        if !self.settings.is_empty() {
            let s: Vec<String> = self
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(out, "  settings     {}", s.join(" "))?;
        }
        writeln!(
            out,
            "  window       {:.2} s after {:.2} s warm-up, {} thread(s)",
            self.window_s, self.warmup_s, self.threads
        )?;
        let c = &self.counts;
        let r = &self.rates;
        let what = match self.scenario.as_str() {
            "handshake" => "handshakes",
            "latency" => "requests",
            "throughput" => "streams",
            _ => "connections",
        };
        write!(out, "  {what:<12} {} ok, {} errors", c.ok, c.errors)?;
        if self.scenario != "throughput" && self.scenario != "hold" {
            write!(out, ", {:.0}/s", r.ops_per_s)?;
        }
        writeln!(out)?;
        if self.scenario == "handshake" {
            writeln!(out, "  resumed      {:.1}%", r.resumed_share * 100.0)?;
        }
        if c.unsent > 0 {
            writeln!(
                out,
                "  unsent       {} fell due but never started (all busy); in the latency as lower bounds",
                c.unsent
            )?;
        }
        if c.sent + c.received > 0 {
            writeln!(
                out,
                "  bytes        sent {} ({:.1} MB/s), received {} ({:.1} MB/s)  [MB = 10^6]",
                c.sent, r.sent_mb_s, c.received, r.received_mb_s
            )?;
        }
        if let Some(l) = &self.latency {
            if l.count > 0 {
                writeln!(
                    out,
                    "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "latency ms", "p50", "p90", "p99", "p99.9", "max", "mean"
                )?;
                let row = |out: &mut dyn Write, name: &str, p: &Percentiles| {
                    writeln!(
                        out,
                        "  {:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                        name, p.p50, p.p90, p.p99, p.p999, p.max, p.mean
                    )
                };
                row(out, "  total", l)?;
                if let Some(s) = &self.service {
                    if s != l {
                        row(out, "  service", s)?;
                    }
                }
            }
        }
        if let Some(h) = &self.hold {
            writeln!(out, "  held         {} of {} open", h.open, h.requested)?;
            match (h.rss_bytes_per_conn, h.fds_per_conn, &h.after) {
                (Some(rss), Some(fds), Some(after)) => writeln!(
                    out,
                    "  target       {:.0} bytes RSS and {:.2} fds per connection (RSS {:.1} MiB, {} fds)",
                    rss,
                    fds,
                    after.rss_bytes as f64 / 1048576.0,
                    after.fds
                )?,
                _ => {
                    if let Some(note) = &h.note {
                        writeln!(out, "  target       {note}")?;
                    }
                }
            }
        }
        if let Some(ramp) = &self.ramp {
            writeln!(
                out,
                "  {:>12} {:>12} {:>10} {:>8}   (SLO p99 {} ms, error budget {:.2}%)",
                format!("offered {}/s", short_unit(&ramp.unit)),
                "achieved/s",
                "p99 ms",
                "errors",
                ramp.slo_p99_ms,
                ramp.error_budget * 100.0
            )?;
            for s in &ramp.steps {
                writeln!(
                    out,
                    "  {:>12.0} {:>12.0} {:>10.3} {:>7.2}%   {}",
                    s.offered,
                    s.achieved,
                    s.p99_ms,
                    s.error_share * 100.0,
                    if s.ok { "ok" } else { "BROKEN" }
                )?;
            }
            match ramp.sustainable {
                Some(r) => writeln!(out, "  sustainable  {r:.0} {}/s ({})", ramp.unit, ramp.stop)?,
                None => writeln!(out, "  sustainable  none ({})", ramp.stop)?,
            }
        }
        write!(out, "  client CPU   {:.2} s", self.client_cpu_s)?;
        if let Some(t) = self.target_cpu_s {
            write!(out, "; target CPU {t:.2} s")?;
            if let Some(x) = r
                .ops_per_target_cpu_s
                .filter(|_| c.ok > 0 && self.scenario != "throughput")
            {
                write!(out, " ({x:.0} ops per target CPU-second)")?;
            }
            if let Some(x) = r.mb_per_target_cpu_s.filter(|_| c.sent + c.received > 0) {
                write!(out, " ({x:.1} MB per target CPU-second)")?;
            }
        }
        writeln!(out)?;
        for (reason, n) in &self.errors {
            let detail = self
                .error_details
                .get(reason)
                .map(String::as_str)
                .unwrap_or("");
            writeln!(out, "  error        {n} × {reason}: {detail}")?;
        }
        if let Some(a) = &self.aborted {
            writeln!(out, "  ABORTED      {a}")?;
        }
        if let Some(f) = &self.failed {
            writeln!(out, "  FAILED       {f}")?;
        }
        Ok(())
    }
}

fn short_unit(unit: &str) -> &str {
    match unit {
        "connections" => "conn",
        "requests" => "req",
        u => u,
    }
}
