//! The load scenarios. Each one is the body of a worker thread (see [`crate::engine`]):
//! it records into the thread's sample and ends soon after the run says stop.

pub mod handshake;
pub mod hold;
pub mod latency;
pub mod ramp;
pub mod throughput;

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::Ctx;
use crate::net::Dialer;
use crate::tls::ClientSpec;

/// The endpoint under test and how to reach it.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `None`: plain TCP (to measure a backend directly).
    pub tls: Option<ClientSpec>,
    pub connect_timeout: Duration,
}

impl Target {
    /// This thread's dialer, with its own session cache when `resume`.
    pub fn dialer(&self, resume: bool) -> Dialer {
        let tls = self
            .tls
            .as_ref()
            .map(|spec| (spec.thread_config(resume), spec.server_name.clone()));
        Dialer::new(self.addr, tls, self.connect_timeout)
    }
}

/// This thread's share of `total` items (threads take turns: 0, 1, ..., 0, 1, ...).
pub fn share(total: usize, ctx: &Ctx) -> usize {
    total / ctx.threads + usize::from(ctx.thread < total % ctx.threads)
}

/// How long a closing connection may take (close_notify, FIN, the peer's answer).
pub const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Pause after a failure so that a dead target is not hammered in a tight loop.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(20);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
