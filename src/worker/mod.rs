//! Thread-per-core workers. Each worker is one OS thread, optionally pinned to a CPU, running
//! its own tokio-uring runtime with its own SO_REUSEPORT listener per service. Workers share
//! only the read-only [`Config`]; counters, connection counts and buffers are worker-local.

mod connection;
mod ktls_relay;

use std::cell::Cell;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_uring::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::conn::offload;
use crate::io::pipe::PipePool;
use crate::obs::{self, ServiceStats, WorkerStats};

/// Orders the main thread sends to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Log this worker's counters.
    Stats,
    /// Stop accepting, drain open connections up to `drain_timeout`, then exit.
    Shutdown,
}

/// One service's listening socket, bound by the main thread for one worker.
pub struct WorkerListener {
    pub service: usize,
    pub socket: StdListener,
    /// A duplicate of the socket, kept to shut the listener down while an accept is in flight.
    pub shutdown_handle: socket2::Socket,
}

pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<usize>,
    pub config: Arc<Config>,
    pub listeners: Vec<WorkerListener>,
}

/// Worker-local state shared by its tasks (single thread: `Rc` and `Cell`).
pub(crate) struct WorkerCtx {
    pub id: usize,
    pub config: Arc<Config>,
    pub stats: WorkerStats,
    /// Open connections per service on this worker.
    pub active: Vec<Cell<u32>>,
    /// Per-service share of `max_connections` for this worker.
    pub limits: Vec<u32>,
    /// Per-service TLS config owned by this worker (see `tls::per_worker_config`).
    pub tls: Vec<Arc<rustls::ServerConfig>>,
    /// Spare pipes for the kTLS splice relay.
    pub pipes: PipePool,
    /// Per-service handshake counters.
    pub service_stats: Vec<ServiceStats>,
    /// Signalled whenever a connection ends.
    pub conn_closed: Notify,
    /// Signalled when drain time is up: open connections close at once.
    pub force_close: Notify,
    pub draining: Cell<bool>,
}

/// Idle pipes a worker keeps for reuse (two per kTLS connection).
const PIPES_KEPT_PER_WORKER: usize = 128;

/// Pipe size for splicing: the largest service `buffer_size`, at least the kernel default
/// (64 KiB) and at most the unprivileged maximum (1 MiB).
fn pipe_size(config: &Config) -> usize {
    let largest = config
        .services
        .iter()
        .map(|s| s.tunables.buffer_size)
        .max()
        .unwrap_or(0);
    largest.clamp(64 * 1024, 1024 * 1024)
}

impl WorkerCtx {
    fn total_active(&self) -> u32 {
        self.active.iter().map(Cell::get).sum()
    }
}

/// Runs a worker on the current thread until it is told to shut down and has drained.
pub fn run(
    spec: WorkerSpec,
    control: mpsc::UnboundedReceiver<Control>,
    started: std::sync::mpsc::Sender<usize>,
) {
    if let Some(cpu) = spec.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            warn!(worker = spec.id, cpu, "could not pin worker to CPU");
        }
    }
    tokio_uring::start(worker_main(spec, control, started));
}

async fn worker_main(
    spec: WorkerSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    started: std::sync::mpsc::Sender<usize>,
) {
    let workers = spec.config.global.workers as u32;
    let ctx = Rc::new(WorkerCtx {
        id: spec.id,
        limits: spec
            .config
            .services
            .iter()
            .map(|s| s.tunables.max_connections.div_ceil(workers).max(1))
            .collect(),
        active: spec.config.services.iter().map(|_| Cell::new(0)).collect(),
        tls: spec
            .config
            .services
            .iter()
            .map(|s| {
                let extract = offload::may_offload(s.ktls, spec.config.kernel_tls.as_ref());
                crate::tls::per_worker_config(&s.tls, &s.certified, s.session_cache_size, extract)
            })
            .collect(),
        pipes: PipePool::new(pipe_size(&spec.config), PIPES_KEPT_PER_WORKER),
        service_stats: spec
            .config
            .services
            .iter()
            .map(|_| ServiceStats::default())
            .collect(),
        config: spec.config,
        stats: WorkerStats::default(),
        conn_closed: Notify::new(),
        force_close: Notify::new(),
        draining: Cell::new(false),
    });

    let mut handles = Vec::with_capacity(spec.listeners.len());
    let mut accept_tasks = Vec::with_capacity(spec.listeners.len());
    for l in spec.listeners {
        let listener = TcpListener::from_std(l.socket);
        handles.push(l.shutdown_handle);
        accept_tasks.push(tokio_uring::spawn(accept_loop(
            ctx.clone(),
            l.service,
            listener,
        )));
    }
    let _ = started.send(ctx.id);

    while let Some(order) = control.recv().await {
        match order {
            Control::Stats => log_stats(&ctx),
            Control::Shutdown => break,
        }
    }

    // Stop accepting: shutting a listening socket down fails its pending accept (EINVAL) and
    // takes it out of the SO_REUSEPORT group, so new connections go nowhere rather than queue.
    ctx.draining.set(true);
    ctx.conn_closed.notify_waiters(); // wakes accept loops paused at max_connections
    for h in &handles {
        let _ = h.shutdown(std::net::Shutdown::Both);
    }
    for t in accept_tasks {
        let _ = t.await;
    }
    drop(handles);

    let drain = ctx.config.global.drain_timeout;
    let open = ctx.total_active();
    if open > 0 {
        info!(
            worker = ctx.id,
            open,
            drain_timeout_ms = drain.as_millis() as u64,
            "draining connections"
        );
    }
    if tokio::time::timeout(drain, wait_idle(&ctx)).await.is_err() {
        warn!(
            worker = ctx.id,
            open = ctx.total_active(),
            "drain_timeout reached: closing remaining connections"
        );
        ctx.force_close.notify_waiters();
        let _ = tokio::time::timeout(Duration::from_secs(5), wait_idle(&ctx)).await;
    }
    log_stats(&ctx);
}

async fn wait_idle(ctx: &WorkerCtx) {
    while ctx.total_active() > 0 {
        ctx.conn_closed.notified().await;
    }
}

fn log_stats(ctx: &WorkerCtx) {
    ctx.stats.sync_thread_counters();
    info!("worker stats worker={} {}", ctx.id, ctx.stats.render());
    for (svc, st) in ctx.config.services.iter().zip(&ctx.service_stats) {
        info!(
            "service stats worker={} service={} handshakes_full={} handshakes_resumed={}",
            ctx.id,
            svc.name,
            st.handshakes_full.get(),
            st.handshakes_resumed.get()
        );
    }
}

async fn accept_loop(ctx: Rc<WorkerCtx>, service: usize, listener: TcpListener) {
    let limit = ctx.limits[service];
    loop {
        if ctx.active[service].get() >= limit {
            obs::inc(&ctx.stats.max_conn_pauses);
            debug!(worker = ctx.id, service = %ctx.config.services[service].name, limit, "max_connections reached: accept paused");
            while ctx.active[service].get() >= limit && !ctx.draining.get() {
                ctx.conn_closed.notified().await;
            }
        }
        if ctx.draining.get() {
            return;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                if ctx.draining.get() {
                    return;
                }
                obs::inc(&ctx.stats.accepted);
                obs::inc(&ctx.stats.active);
                let active = &ctx.active[service];
                active.set(active.get() + 1);
                tokio_uring::spawn(connection::serve(ctx.clone(), service, stream, peer));
            }
            Err(_) if ctx.draining.get() => return,
            Err(e) => {
                obs::inc(&ctx.stats.accept_errors);
                warn!(worker = ctx.id, error = %e, "accept failed");
                // Out of fds or memory: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
