//! Results of a throughput run and their text form.

use std::io::{self, Write};

use serde::Serialize;

use crate::throughput::Direction;

#[derive(Debug, Default, Serialize)]
pub struct StreamReport {
    pub id: usize,
    pub connect_ms: f64,
    /// Protocol and suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    /// Length of the measured window.
    pub window_s: f64,
    /// Bytes handed to the connection during the window.
    pub sent: u64,
    /// Bytes read during the window.
    pub received: u64,
    /// Bytes read after the window, while closing (echo tail).
    pub drained: u64,
    /// First offset at which received data was not the pattern.
    pub corrupt_at: Option<u64>,
    /// How the connection ended after the window.
    pub close: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub connect: String,
    pub direction: Direction,
    /// TLS (else plain TCP) was asked for.
    pub tls: bool,
    pub streams: Vec<StreamReport>,
    /// Longest stream window.
    pub window_s: f64,
    /// This process's CPU seconds (user + system) from the start of the window to the end.
    pub client_cpu_s: f64,
}

impl Report {
    pub fn sent(&self) -> u64 {
        self.streams.iter().map(|s| s.sent).sum()
    }
    pub fn received(&self) -> u64 {
        self.streams.iter().map(|s| s.received).sum()
    }
    pub fn failed(&self) -> bool {
        self.streams
            .iter()
            .any(|s| s.error.is_some() || s.corrupt_at.is_some())
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let negotiated = self.streams.iter().find_map(|s| s.tls.as_deref());
        let transport = match (self.tls, negotiated) {
            (false, _) => "plain TCP",
            (true, Some(t)) => t,
            (true, None) => "TLS (no handshake completed)",
        };
        writeln!(
            out,
            "throughput {} {:?} over {}: {} stream(s), {:.2} s window (MB = 10^6 bytes)",
            self.connect,
            self.direction,
            transport,
            self.streams.len(),
            self.window_s
        )?;
        writeln!(
            out,
            "{:>6} {:>10} {:>10} {:>10} {:>10}  close",
            "stream", "conn_ms", "send_MB/s", "recv_MB/s", "drained"
        )?;
        for s in &self.streams {
            let w = s.window_s.max(1e-9);
            writeln!(
                out,
                "{:>6} {:>10.2} {:>10.1} {:>10.1} {:>10}  {}{}",
                s.id,
                s.connect_ms,
                mb(s.sent) / w,
                mb(s.received) / w,
                s.drained,
                s.close,
                s.error
                    .as_ref()
                    .map(|e| format!(" ERROR: {e}"))
                    .unwrap_or_default()
            )?;
            if let Some(at) = s.corrupt_at {
                writeln!(out, "{:>6} DATA MISMATCH at offset {at}", s.id)?;
            }
        }
        let w = self.window_s.max(1e-9);
        let (tx, rx) = (mb(self.sent()), mb(self.received()));
        writeln!(
            out,
            "{:>6} {:>10} {:>10.1} {:>10.1}",
            "total",
            "",
            tx / w,
            rx / w
        )?;
        writeln!(
            out,
            "bytes: sent {} received {}",
            self.sent(),
            self.received()
        )?;
        if self.window_s <= 0.0 || self.client_cpu_s <= 0.0 {
            return writeln!(out, "client CPU: {:.2} s", self.client_cpu_s);
        }
        writeln!(
            out,
            "client CPU: {:.2} s ({:.2} cores busy, {:.1} MB per client CPU-second)",
            self.client_cpu_s,
            self.client_cpu_s / w,
            (tx + rx) / self.client_cpu_s
        )
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
