//! Thread-per-core workers. Each worker is one OS thread, optionally pinned to a CPU, running
//! its own tokio-uring runtime with its own SO_REUSEPORT listener per service. Workers share
//! only the read-only [`Config`]; counters, connection counts and buffers are worker-local.

mod bufpool;
mod client_mode;
mod connection;
mod ktls_relay;
mod passthrough;
mod plain_end;
mod relay;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_uring::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::{Config, Service};
use crate::conn::offload;
use crate::io::pipe::PipePool;
use crate::obs::metrics::{Registry, ServiceStats};
use crate::obs::{self, WorkerStats};

/// Orders the main thread sends to a worker.
pub enum Control {
    /// Log this worker's counters.
    Stats,
    /// Serve new connections with a new configuration (SIGHUP); open ones keep theirs.
    Reload(Reload),
    /// The identity lookup asks about a backend connection; the reply is what this worker
    /// knows of it.
    Lookup(
        crate::route::identity::Query,
        std::sync::mpsc::Sender<crate::route::identity::Answer>,
    ),
    /// Stop accepting, drain open connections up to `drain_timeout`, then exit.
    Shutdown,
}

/// A validated new configuration and, per service of it, this worker's listener.
pub struct Reload {
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerChange>,
}

/// Where a service of a reloaded configuration gets its listener on a worker.
pub enum ListenerChange {
    /// The address did not change: keep the bound listener (no refused connections).
    Keep(SocketAddr),
    /// A new address: a listener the main thread has just bound.
    New(WorkerListener),
}

/// One service's listening socket, bound by the main thread for one worker.
pub struct WorkerListener {
    pub service: usize,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    pub socket: StdListener,
    /// A duplicate of the socket, kept to shut the listener down while an accept is in flight.
    pub shutdown_handle: socket2::Socket,
}

pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<usize>,
    pub config: Arc<Config>,
    pub listeners: Vec<WorkerListener>,
    /// Where the worker registers its counters for the admin endpoint.
    pub metrics: Arc<Registry>,
}

/// One service as a worker runs it. Connections keep the `Rc` they started with, so a reload
/// never changes an open connection; the counters carry over when the listener is kept.
pub(crate) struct ServiceRt {
    pub config: Arc<Config>,
    pub index: usize,
    /// Per route of the service (same order): this worker's TLS configs and pools.
    pub routes: Vec<RouteRt>,
    /// Client mode: this worker's client config (its own ticket store).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// This worker's share of `max_connections`.
    pub limit: u32,
    /// The service's counters on this worker; `stats.active` (open connections) is what
    /// `limit` is held against.
    pub stats: Arc<ServiceStats>,
    /// Set when a reload replaced this configuration: its health checks stop (open
    /// connections still use it to their end).
    pub retired: Cell<bool>,
    /// This worker's idle I/O buffers for the service (relay and handshake).
    buffers: bufpool::BufPool,
    /// This worker's writer of the service's `access_log`.
    pub access_log: Option<crate::obs::access::AccessLog>,
}

/// One route as a worker runs it.
pub(crate) struct RouteRt {
    /// This worker's own TLS config copy (see `tls::per_worker_config`); `None` for a
    /// pass-through route.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Its ChaCha20-first variant, for clients that prefer ChaCha20 (`cipher_preference`).
    pub tls_chacha_first: Option<Arc<rustls::ServerConfig>>,
    /// This worker's view of each upstream's backends (balancing, passive health), in the
    /// route's upstream order.
    pub pools: Vec<crate::route::pool::Pool>,
    /// Re-encryption: this worker's client config toward the backend (its own tickets).
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
}

impl ServiceRt {
    fn new(config: &Arc<Config>, index: usize, stats: Arc<ServiceStats>) -> Rc<ServiceRt> {
        let svc = &config.services[index];
        let workers = config.global.workers as u32;
        let extract = offload::may_offload(svc.ktls, config.kernel_tls.as_ref());
        let routes = svc
            .routes
            .iter()
            .map(|route| {
                let tls = route.tls.as_ref().map(|t| {
                    crate::tls::per_worker_config(
                        &t.config,
                        &t.certified,
                        svc.session_cache_size,
                        extract,
                    )
                });
                let tls_chacha_first = match (&route.tls, &tls) {
                    (Some(t), Some(primary)) => t
                        .chacha_first
                        .as_ref()
                        .map(|v| crate::tls::per_worker_variant(v, primary)),
                    _ => None,
                };
                let pools = route
                    .upstreams
                    .iter()
                    .map(|u| crate::route::pool::Pool::new(u.backend.addrs().len().max(1), u.pool))
                    .collect();
                let backend_tls = route.backend_tls.as_ref().map(|b| {
                    crate::tls::per_worker_client_config(&b.config, svc.session_cache_size, false)
                });
                RouteRt {
                    tls,
                    tls_chacha_first,
                    pools,
                    backend_tls,
                }
            })
            .collect();
        let client_tls = svc.client.as_ref().map(|c| {
            crate::tls::per_worker_client_config(&c.config, svc.session_cache_size, extract)
        });
        let rt = Rc::new(ServiceRt {
            config: config.clone(),
            index,
            routes,
            client_tls,
            limit: svc.tunables.max_connections.div_ceil(workers).max(1),
            stats,
            retired: Cell::new(false),
            buffers: bufpool::BufPool::new(svc.tunables.buffer_size),
            access_log: svc.access_log.as_ref().and_then(|path| {
                match crate::obs::access::open(path) {
                    Ok(file) => Some(crate::obs::access::AccessLog::new(
                        file,
                        config.global.log_format,
                    )),
                    Err(e) => {
                        warn!(service = %svc.name, path = %path.display(), error = %e, "cannot open the access log: not writing it");
                        None
                    }
                }
            }),
        });
        if rt.access_log.is_some() {
            tokio_uring::spawn(flush_access_log(Rc::downgrade(&rt)));
        }
        let checks = svc.routes.iter().enumerate().flat_map(|(r, route)| {
            route
                .upstreams
                .iter()
                .enumerate()
                .map(move |(u, up)| (r, u, up))
        });
        for (r, u, up) in checks {
            if let Some(every) = up.pool.check {
                tokio_uring::spawn(health_checks(Rc::downgrade(&rt), r, u, every));
            }
        }
        rt
    }

    pub fn svc(&self) -> &Service {
        &self.config.services[self.index]
    }

    /// The config of a terminating route for a client whose ClientHello offered these
    /// suites (in its order); `None` for a pass-through route.
    pub fn tls_for(
        &self,
        route: usize,
        offered: impl IntoIterator<Item = u16>,
    ) -> Option<&Arc<rustls::ServerConfig>> {
        let r = &self.routes[route];
        match &r.tls_chacha_first {
            Some(chacha) if crate::tls::client_prefers_chacha(offered) => Some(chacha),
            _ => r.tls.as_ref(),
        }
    }
}

/// Active health checks of one upstream's backends, from this worker, for as long as the
/// service (this configuration of it) is in use.
async fn health_checks(
    rt: std::rc::Weak<ServiceRt>,
    route: usize,
    upstream: usize,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(rt) = rt.upgrade().filter(|rt| !rt.retired.get()) else {
            return;
        };
        let svc = rt.svc();
        let pool = &rt.routes[route].pools[upstream];
        let addrs = svc.routes[route].upstreams[upstream].backend.addrs();
        for (i, addr) in addrs.iter().enumerate() {
            let timeout = svc.tunables.connect_timeout;
            match crate::io::connect::connect(*addr, &svc.tunables, timeout).await {
                Ok(stream) => {
                    drop(stream);
                    if pool.check_ok(i) == crate::route::pool::HealthChange::Up {
                        info!(service = %svc.name, backend = %addr, "backend up (health check)");
                    }
                }
                Err(e) => {
                    let now = std::time::Instant::now();
                    if pool.failed(i, now) == crate::route::pool::HealthChange::Down {
                        warn!(service = %svc.name, backend = %addr, error = %e, "backend down (health check)");
                    }
                }
            }
        }
    }
}

/// Writes a service's buffered access-log lines every second, for as long as the worker
/// runs this configuration of it (the rest goes out when it is dropped).
async fn flush_access_log(rt: std::rc::Weak<ServiceRt>) {
    loop {
        tokio::time::sleep(crate::obs::access::FLUSH_EVERY).await;
        match rt.upgrade() {
            Some(rt) => {
                if let Some(log) = &rt.access_log {
                    log.flush();
                }
            }
            None => return,
        }
    }
}

/// A listener a worker runs, and the service its new connections go to.
struct ListenerRt {
    addr: SocketAddr,
    current: Rc<RefCell<Rc<ServiceRt>>>,
    shutdown_handle: socket2::Socket,
    task: tokio::task::JoinHandle<()>,
}

/// Worker-local state shared by its tasks (single thread: `Rc` and `Cell`).
pub(crate) struct WorkerCtx {
    pub id: usize,
    /// The configuration new connections use (replaced on reload).
    pub config: RefCell<Arc<Config>>,
    pub stats: Arc<WorkerStats>,
    /// The process's counter registry (this worker adds a set per service it runs).
    pub metrics: Arc<Registry>,
    /// Spare pipes for the kTLS splice relay.
    pub pipes: PipePool,
    /// Signalled whenever a connection ends.
    pub conn_closed: Notify,
    /// Signalled when drain time is up: open connections close at once.
    pub force_close: Notify,
    pub draining: Cell<bool>,
    /// Connections accepted so far (the last connection id's sequence number).
    pub conns_seen: Cell<u64>,
    /// This worker's backend connections for the identity lookup (when configured).
    pub identities: crate::route::identity::Registry,
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
    fn total_active(&self) -> u64 {
        self.stats.active.get()
    }

    /// A new counter set for service `index` of `config` on this worker.
    fn service_stats(&self, config: &Config, index: usize) -> Arc<ServiceStats> {
        self.metrics
            .add_service(&config.services[index].name, self.id)
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
    // COOP_TASKRUN: a completion does not interrupt the worker with an IPI while it runs;
    // it is picked up at the worker's next entry into the kernel, which comes soon on a busy
    // worker (and a sleeping one is still woken).
    let mut uring = tokio_uring::uring_builder();
    uring.setup_coop_taskrun().setup_taskrun_flag();
    tokio_uring::builder()
        .uring_builder(&uring)
        .start(worker_main(spec, control, started));
}

async fn worker_main(
    spec: WorkerSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    started: std::sync::mpsc::Sender<usize>,
) {
    let stats = Arc::new(WorkerStats::default());
    spec.metrics.add_worker(spec.id, stats.clone());
    crate::tls::tickets::count_decrypt_failures_in(stats.clone());
    let ctx = Rc::new(WorkerCtx {
        id: spec.id,
        metrics: spec.metrics.clone(),
        pipes: PipePool::new(pipe_size(&spec.config), PIPES_KEPT_PER_WORKER),
        config: RefCell::new(spec.config.clone()),
        stats,
        conn_closed: Notify::new(),
        force_close: Notify::new(),
        draining: Cell::new(false),
        conns_seen: Cell::new(0),
        identities: Default::default(),
    });
    let mut listeners: Vec<ListenerRt> = spec
        .listeners
        .into_iter()
        .map(|l| {
            let stats = ctx.service_stats(&spec.config, l.service);
            let rt = ServiceRt::new(&spec.config, l.service, stats);
            start_listener(&ctx, l, rt)
        })
        .collect();
    let _ = started.send(ctx.id);

    while let Some(order) = control.recv().await {
        match order {
            Control::Stats => log_stats(&ctx, &listeners),
            Control::Reload(reload) => listeners = apply_reload(&ctx, listeners, reload),
            Control::Lookup(query, reply) => {
                let _ = reply.send(ctx.identities.answer(query));
            }
            Control::Shutdown => break,
        }
    }
    // Open connections still have backends that may ask who their client is.
    let answering = ctx.clone();
    tokio_uring::spawn(async move {
        while let Some(order) = control.recv().await {
            if let Control::Lookup(query, reply) = order {
                let _ = reply.send(answering.identities.answer(query));
            }
        }
    });

    // Stop accepting: shutting a listening socket down fails its pending accept (EINVAL) and
    // takes it out of the SO_REUSEPORT group, so new connections go nowhere rather than queue.
    ctx.draining.set(true);
    ctx.conn_closed.notify_waiters(); // wakes accept loops paused at max_connections
    let mut stats_of = Vec::with_capacity(listeners.len());
    for l in listeners {
        let _ = l.shutdown_handle.shutdown(std::net::Shutdown::Both);
        let _ = l.task.await;
        stats_of.push(l.current);
    }

    let drain = ctx.config.borrow().global.drain_timeout;
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
    log_worker_stats(&ctx);
    for current in &stats_of {
        log_service_stats(&ctx, &current.borrow());
    }
}

fn start_listener(ctx: &Rc<WorkerCtx>, l: WorkerListener, rt: Rc<ServiceRt>) -> ListenerRt {
    let current = Rc::new(RefCell::new(rt));
    let listener = TcpListener::from_std(l.socket);
    ListenerRt {
        addr: l.addr,
        task: tokio_uring::spawn(accept_loop(ctx.clone(), current.clone(), listener)),
        current,
        shutdown_handle: l.shutdown_handle,
    }
}

/// New connections on kept listeners use the new configuration; new listeners start;
/// listeners the new configuration does not mention stop accepting (their open connections
/// go on to their natural end).
fn apply_reload(ctx: &Rc<WorkerCtx>, old: Vec<ListenerRt>, reload: Reload) -> Vec<ListenerRt> {
    let Reload { config, listeners } = reload;
    let mut old: Vec<Option<ListenerRt>> = old.into_iter().map(Some).collect();
    let mut next = Vec::with_capacity(listeners.len());
    for (index, change) in listeners.into_iter().enumerate() {
        match change {
            ListenerChange::Keep(addr) => {
                let Some(l) = old
                    .iter_mut()
                    .find(|l| l.as_ref().is_some_and(|l| l.addr == addr))
                else {
                    warn!(worker = ctx.id, %addr, "reload: no listener to keep at this address");
                    continue;
                };
                let l = l.take().expect("found above");
                let previous = l.current.borrow().clone();
                previous.retired.set(true);
                // The counters (open connections among them, which the limit counts) go
                // with the listener, under the name the service had when it was bound.
                let rt = ServiceRt::new(&config, index, previous.stats.clone());
                // Accepted sockets inherit the listener's options: give it the new ones.
                let tunables = &rt.svc().tunables;
                let applied = crate::io::sockopt::apply_stream_tunables(
                    &socket2::SockRef::from(&l.shutdown_handle),
                    tunables,
                );
                if let Err(e) = applied {
                    warn!(worker = ctx.id, %addr, error = %e, "reload: cannot set socket options on the kept listener");
                }
                let before = &previous.svc().tunables;
                if (before.rcvbuf.is_some() && tunables.rcvbuf.is_none())
                    || (before.sndbuf.is_some() && tunables.sndbuf.is_none())
                {
                    // The kernel has no "back to the default" for a buffer size that was set.
                    warn!(worker = ctx.id, %addr, "reload: rcvbuf/sndbuf went back to the kernel default; new connections keep the old sizes until a restart");
                }
                *l.current.borrow_mut() = rt;
                next.push(l);
            }
            ListenerChange::New(listener) => {
                let stats = ctx.service_stats(&config, index);
                let rt = ServiceRt::new(&config, index, stats);
                next.push(start_listener(ctx, listener, rt));
            }
        }
    }
    for l in old.into_iter().flatten() {
        info!(worker = ctx.id, addr = %l.addr, service = %l.current.borrow().svc().name, "reload: listener closed");
        l.current.borrow().retired.set(true);
        let _ = l.shutdown_handle.shutdown(std::net::Shutdown::Both);
    }
    *ctx.config.borrow_mut() = config;
    next
}

async fn wait_idle(ctx: &WorkerCtx) {
    while ctx.total_active() > 0 {
        ctx.conn_closed.notified().await;
    }
}

fn log_stats(ctx: &WorkerCtx, listeners: &[ListenerRt]) {
    log_worker_stats(ctx);
    for l in listeners {
        log_service_stats(ctx, &l.current.borrow());
    }
}

fn log_worker_stats(ctx: &WorkerCtx) {
    info!("worker stats worker={} {}", ctx.id, ctx.stats.render());
}

fn log_service_stats(ctx: &WorkerCtx, rt: &ServiceRt) {
    info!(
        "service stats worker={} service={} handshakes_full={} handshakes_resumed={}",
        ctx.id,
        rt.svc().name,
        rt.stats.handshakes(false),
        rt.stats.handshakes(true)
    );
}

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    current: Rc<RefCell<Rc<ServiceRt>>>,
    listener: TcpListener,
) {
    loop {
        let rt = current.borrow().clone();
        if rt.stats.active.get() >= u64::from(rt.limit) {
            obs::inc(&ctx.stats.max_conn_pauses);
            debug!(worker = ctx.id, service = %rt.svc().name, limit = rt.limit, "max_connections reached: accept paused");
            while rt.stats.active.get() >= u64::from(rt.limit) && !ctx.draining.get() {
                ctx.conn_closed.notified().await;
            }
        }
        if ctx.draining.get() {
            return;
        }
        drop(rt);
        match listener.accept().await {
            Ok((stream, peer)) => {
                if ctx.draining.get() {
                    return;
                }
                let rt = current.borrow().clone();
                obs::inc(&ctx.stats.accepted);
                obs::inc(&ctx.stats.active);
                obs::inc(&rt.stats.accepted);
                obs::inc(&rt.stats.active);
                tokio_uring::spawn(connection::serve(ctx.clone(), rt, stream, peer));
            }
            // A closed listener (shutdown, or removed by a reload) fails its accept.
            Err(e) if ctx.draining.get() || e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => {
                obs::inc(&ctx.stats.accept_errors);
                warn!(worker = ctx.id, error = %e, "accept failed");
                // Out of fds or memory: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
