//! Start-up and lifecycle: bind every listener first (so a bad address fails before any
//! worker runs), start the workers, then turn signals into orders for them.
//!
//! SIGTERM / SIGINT: `/ready` turns 503; after `shutdown_delay` (listeners still accepting,
//! so load balancers can stop sending) stop accepting, drain up to `drain_timeout`, exit 0.
//! SIGUSR1: every worker logs its counters.
//! SIGHUP: re-read and validate the configuration, certificates and ticket keys; new
//! connections use it, open ones keep theirs; a failed reload changes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{self, Backend, Config, Overrides, Service, TicketKeys};
use crate::obs::admin::{self, AdminAddr, AdminListener};
use crate::obs::metrics::Registry;
use crate::route::identity;
use crate::worker::{self, Control, ListenerChange, Reload, WorkerListener, WorkerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{origin}: cannot listen on {addr}: {source}")]
    Bind {
        origin: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the built-in echo backend: {0}")]
    Echo(std::io::Error),
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
    #[error("cannot drop privileges to user {user} (uid {uid}) group {group} (gid {gid}): {source} (changing user needs starting as root)")]
    Privilege {
        user: String,
        uid: u32,
        group: String,
        gid: u32,
        source: std::io::Error,
    },
    #[error("refusing to serve as root: set [global] user = \"...\" (tlsfront drops to it once its listeners are bound and its keys read), or allow_root = true (--allow-root) to serve as root anyway")]
    Root,
    #[error("admin {addr}: {source}")]
    Admin {
        addr: String,
        source: std::io::Error,
    },
    #[error("identity_socket {path}: {source}")]
    IdentitySocket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Answers one identity query by asking every worker (each knows only its own connections).
/// A backend may ask the moment it accepts, before the worker has seen its connect complete
/// and registered the connection: a miss is asked again a few times, 20 ms apart.
fn ask_workers(
    controls: &[mpsc::UnboundedSender<Control>],
    query: identity::Query,
) -> Result<String, String> {
    let mut result = Err(String::new());
    for attempt in 0..4 {
        if attempt > 0 {
            thread::sleep(std::time::Duration::from_millis(20));
        }
        result = identity::combine(query, ask_workers_once(controls, query));
        if result.is_ok() {
            break;
        }
    }
    result
}

fn ask_workers_once(
    controls: &[mpsc::UnboundedSender<Control>],
    query: identity::Query,
) -> Vec<identity::Answer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = controls
        .iter()
        .filter(|c| c.send(Control::Lookup(query, tx.clone())).is_ok())
        .count();
    drop(tx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut answers = Vec::with_capacity(asked);
    for _ in 0..asked {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(answer) => answers.push(answer),
            Err(_) => break,
        }
    }
    answers
}

/// The identity socket's file, removed when the process is done with it (also when
/// start-up fails after it was bound).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Tells the main thread, from a worker thread's drop (normal end or panic), that it ended.
struct ExitNotice(usize, mpsc::UnboundedSender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// Orders every worker to drain and waits for them.
fn stop_workers(controls: &[mpsc::UnboundedSender<Control>], threads: Vec<thread::JoinHandle<()>>) {
    for c in controls {
        let _ = c.send(Control::Shutdown);
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Binds one SO_REUSEPORT listener per worker for a service. Port 0 is resolved once, by
/// the first bind, and the other workers join that port. Returns them and the bound address.
fn bind_service(
    svc: &Service,
    index: usize,
    workers: usize,
) -> Result<(Vec<WorkerListener>, SocketAddr), ServerError> {
    let mut addr = svc.listen;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let at = addr;
        let bind_err = |source| ServerError::Bind {
            origin: svc.listen_origin.clone(),
            addr: at,
            source,
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(bind_err)?;
        socket.set_reuse_address(true).map_err(bind_err)?;
        socket.set_reuse_port(true).map_err(bind_err)?;
        // Accepted sockets inherit these (Linux copies the listener's options), so a new
        // connection costs no setsockopt calls.
        crate::io::sockopt::apply_stream_tunables(&socket2::SockRef::from(&socket), &svc.tunables)
            .map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket
            .listen(svc.tunables.backlog.min(i32::MAX as u32) as i32)
            .map_err(bind_err)?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| bind_err(std::io::Error::other("no local address")))?;
        }
        let shutdown_handle = socket.try_clone().map_err(bind_err)?;
        listeners.push(WorkerListener {
            service: index,
            addr,
            socket: socket.into(),
            shutdown_handle,
        });
    }
    Ok((listeners, addr))
}

/// A service's address as configured and as bound (they differ for port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    configured: SocketAddr,
    bound: SocketAddr,
}

/// Everything binds or nothing does: on error the sockets bound so far are dropped.
fn bind_all(config: &Config) -> Result<(Vec<Vec<WorkerListener>>, Vec<Binding>), ServerError> {
    let workers = config.global.workers;
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bindings = Vec::with_capacity(config.services.len());
    for (index, svc) in config.services.iter().enumerate() {
        let (listeners, bound) = bind_service(svc, index, workers)?;
        for (w, l) in listeners.into_iter().enumerate() {
            per_worker[w].push(l);
        }
        bindings.push(Binding {
            configured: svc.listen,
            bound,
        });
    }
    Ok((per_worker, bindings))
}

/// Where a SIGHUP re-reads the configuration from.
pub struct ReloadSource {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The built-in loopback echo backend for quick starts: tlsfront-load's backend, one
/// thread on the last CPU this process may use (workers start from the first).
fn spawn_echo() -> std::io::Result<SocketAddr> {
    use tlsfront_load::backend::{Backend as EchoBackend, Mode};
    let last = core_affinity::get_core_ids()
        .and_then(|ids| ids.last().map(|c| c.id))
        .unwrap_or(0);
    EchoBackend::bind("127.0.0.1:0", Mode::Echo)?
        .threads(1)
        .cpus(vec![last])
        .spawn()
}

/// Resolves the built-in echo backend and announces what the operator should know.
fn prepare(config: &mut Config, echo: &mut Option<SocketAddr>) -> Result<(), ServerError> {
    for svc in &mut config.services {
        for route in &mut svc.routes {
            for upstream in &mut route.upstreams {
                if upstream.backend != Backend::BuiltinEcho {
                    continue;
                }
                let addr = match echo {
                    Some(a) => *a,
                    None => {
                        let a = spawn_echo().map_err(ServerError::Echo)?;
                        warn!(service = %svc.name, "no backend configured: started built-in loopback echo backend at {a}");
                        *echo = Some(a);
                        a
                    }
                };
                upstream.backend = Backend::Addr(addr);
            }
            if let Some(tls) = route.tls.as_ref().filter(|t| t.ephemeral_cert) {
                warn!(
                    service = %svc.name,
                    route = %route.name,
                    "no certificate configured: using an ephemeral self-signed certificate for localhost/127.0.0.1 sha256={}",
                    tls.cert_sha256
                );
            }
        }
    }
    Ok(())
}

/// Each worker's orders, the new bindings and the new configuration.
type ReloadPlan = (Vec<Reload>, Vec<Binding>, Arc<Config>);

/// Re-reads and validates the configuration, binds what is new, and returns each worker's
/// orders plus the new bindings. Nothing changes anywhere unless all of it succeeded.
fn plan_reload(
    source: &ReloadSource,
    workers: usize,
    current: &[Binding],
    previous: &Config,
    echo: &mut Option<SocketAddr>,
) -> Result<ReloadPlan, String> {
    let mut config =
        config::load(source.path.as_deref(), &source.overrides).map_err(|e| e.to_string())?;
    keep_random_ticket_keys(&mut config, previous);
    if config.global.workers != workers {
        warn!(
            "reload: workers = {} needs a restart; keeping {workers}",
            config.global.workers
        );
        config.global.workers = workers;
    }
    if config.global.admin != previous.global.admin {
        warn!("reload: admin changes need a restart; keeping the current endpoint");
        config.global.admin = previous.global.admin.clone();
    }
    let socket = |g: &config::Global| (g.identity_socket.clone(), g.identity_socket_mode);
    if socket(&config.global) != socket(&previous.global) {
        warn!("reload: identity_socket changes need a restart; keeping the current socket");
        config.global.identity_socket = previous.global.identity_socket.clone();
        config.global.identity_socket_mode = previous.global.identity_socket_mode;
    }
    prepare(&mut config, echo).map_err(|e| e.to_string())?;
    warn_readable_keys(&config);
    if config.global.run_as != previous.global.run_as {
        warn!("reload: user and group changes need a restart");
        config.global.run_as = previous.global.run_as.clone();
    }
    let mut per_worker: Vec<Vec<ListenerChange>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bindings = Vec::with_capacity(config.services.len());
    for (index, svc) in config.services.iter().enumerate() {
        let kept = current
            .iter()
            .find(|b| b.configured == svc.listen || b.bound == svc.listen)
            .filter(|b| !bindings.iter().any(|n: &Binding| n.bound == b.bound));
        match kept {
            Some(b) => {
                for orders in &mut per_worker {
                    orders.push(ListenerChange::Keep(b.bound));
                }
                bindings.push(Binding {
                    configured: svc.listen,
                    bound: b.bound,
                });
            }
            None => {
                let (listeners, bound) =
                    bind_service(svc, index, workers).map_err(|e| e.to_string())?;
                for (w, l) in listeners.into_iter().enumerate() {
                    per_worker[w].push(ListenerChange::New(l));
                }
                bindings.push(Binding {
                    configured: svc.listen,
                    bound,
                });
            }
        }
    }
    let config = Arc::new(config);
    let reloads = per_worker
        .into_iter()
        .map(|listeners| Reload {
            config: config.clone(),
            listeners,
        })
        .collect();
    for (svc, b) in config.services.iter().zip(&bindings) {
        info!(
            "listening service={} addr={} workers={}",
            svc.name, b.bound, workers
        );
    }
    Ok((reloads, bindings, config))
}

/// In-process random ticket keys would be lost with the old configuration, and every
/// outstanding ticket with them: a service whose key settings did not change keeps its
/// ticketer. (Keys from a file or a secret are simply read or derived again.)
fn keep_random_ticket_keys(config: &mut Config, previous: &Config) {
    for svc in &mut config.services {
        if !matches!(svc.ticket_keys, TicketKeys::Random { .. }) {
            continue;
        }
        let Some(old) = previous
            .services
            .iter()
            .find(|o| o.name == svc.name && o.ticket_keys == svc.ticket_keys)
        else {
            continue;
        };
        let Some(ticketer) = old.ticketer.clone() else {
            continue;
        };
        for tls in svc.routes.iter_mut().filter_map(|r| r.tls.as_mut()) {
            tls.bind_tickets(&ticketer);
        }
        svc.ticketer = Some(ticketer);
    }
}

/// Private keys other users can read are worth a warning (they were read as the user
/// tlsfront started as; nothing else should be able to).
fn warn_readable_keys(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let keys = config
        .services
        .iter()
        .flat_map(|s| &s.routes)
        .filter_map(|r| r.tls.as_ref()?.key_file.as_ref());
    for key in keys {
        if let Ok(meta) = std::fs::metadata(key) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                warn!(
                    "private key {} is readable by every user (mode {mode:04o}): chmod o-r it (0600, or 0640 with tlsfront's group)",
                    key.display()
                );
            }
        }
    }
}

/// Raises RLIMIT_NOFILE to what every service's `max_connections` may need (the same
/// count `tlsfront doctor` checks: two descriptors per connection, four where it may splice),
/// while the process may still raise its hard limit (before dropping privileges); says so
/// when it cannot.
fn ensure_nofile(config: &Config) {
    use crate::io::privilege::{raise_nofile, NofileOutcome};
    let needs = crate::doctor::Needs::from_config(config, std::path::Path::new("-"));
    let connections = needs.total_connections();
    let ktls = config.kernel_tls.as_ref().is_some_and(|k| k.available());
    let need = crate::doctor::descriptors_needed(&needs, ktls);
    match raise_nofile(need) {
        NofileOutcome::Enough { soft } => {
            info!("open files limit {soft} covers max_connections ({connections} in all)")
        }
        NofileOutcome::Raised { from, to } => {
            info!("open files limit raised from {from} to {to} for max_connections ({connections} in all)")
        }
        NofileOutcome::Short { soft, hard } => warn!(
            "open files limit is {soft} (hard limit {hard}) but max_connections ({connections} in all) may need {need}: accepts will fail with EMFILE before max_connections is reached; raise the hard limit (systemd LimitNOFILE=, ulimit -Hn, /etc/security/limits.conf) or lower max_connections"
        ),
    }
}

/// Serving as root is refused unless it was asked for or there is a user to drop to. The
/// built-in demo (no configuration file, no certificate, the built-in echo backend: nothing
/// real behind it, loopback by default) only gets a warning.
fn check_root(config: &Config, source: &ReloadSource) -> Result<(), ServerError> {
    let dropping = config.global.run_as.as_ref().is_some_and(|r| r.uid != 0);
    if !rustix::process::geteuid().is_root() || dropping || config.global.allow_root {
        return Ok(());
    }
    let demo = source.path.is_none()
        && config.services.iter().flat_map(|s| &s.routes).all(|r| {
            r.tls.as_ref().is_some_and(|t| t.ephemeral_cert)
                && r.upstreams
                    .iter()
                    .all(|u| u.backend == Backend::BuiltinEcho)
        });
    if !demo {
        return Err(ServerError::Root);
    }
    warn!("serving the built-in demo as root; with a configuration, tlsfront refuses to run as root unless [global] user or allow_root is set");
    Ok(())
}

/// The services' ticket keys, for the metrics.
fn publish_ticketers(metrics: &Registry, config: &Config) {
    let list = config
        .services
        .iter()
        .filter_map(|s| s.ticketer.clone().map(|t| (s.name.clone(), t)))
        .collect();
    *metrics
        .process
        .ticketers
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = list;
}

/// Runs the proxy until a shutdown signal has been handled and every worker has drained.
/// SIGHUP re-reads the configuration from `source` (see [`plan_reload`]).
pub fn run(mut config: Config, source: ReloadSource) -> Result<(), ServerError> {
    check_root(&config, &source)?;
    let mut echo = None;
    prepare(&mut config, &mut echo)?;
    warn_readable_keys(&config);
    ensure_nofile(&config);
    let metrics = Arc::new(Registry::default());
    publish_ticketers(&metrics, &config);
    let admin_listener = match &config.global.admin {
        Some(addr) => Some(
            AdminListener::bind(addr).map_err(|source| ServerError::Admin {
                addr: match addr {
                    AdminAddr::Tcp(a) => a.to_string(),
                    AdminAddr::Unix(p) => p.display().to_string(),
                },
                source,
            })?,
        ),
        None => None,
    };
    let identity_listener = match &config.global.identity_socket {
        Some(path) => {
            let mode = config.global.identity_socket_mode;
            let listener =
                identity::bind(path, mode).map_err(|source| ServerError::IdentitySocket {
                    path: path.clone(),
                    source,
                })?;
            Some((listener, SocketFile(path.clone())))
        }
        None => None,
    };
    let (listeners, mut bindings) = bind_all(&config)?;
    // Everything that needs the starting user's rights is done: listeners bound, keys read,
    // socket files created (handed to the new user, so it can remove them at exit).
    if let Some(to) = &config.global.run_as {
        let sockets = [
            config.global.identity_socket.clone(),
            match &config.global.admin {
                Some(AdminAddr::Unix(p)) => Some(p.clone()),
                _ => None,
            },
        ];
        for path in sockets.iter().flatten() {
            // Best effort: without CAP_CHOWN (a hardened unit) the file stays root's, and
            // removing it at exit relies on the directory being writable by the user
            // (systemd's RuntimeDirectory with Group=).
            if let Err(e) = crate::io::privilege::chown(path, to) {
                debug!(path = %path.display(), error = %e, "cannot hand the socket file to {}", to.user);
            }
        }
        if let Err(source) = crate::io::privilege::drop_to(to) {
            return Err(ServerError::Privilege {
                user: to.user.clone(),
                uid: to.uid,
                group: to.group.clone(),
                gid: to.gid,
                source,
            });
        }
        info!(
            "running as user={} uid={} group={} gid={}",
            to.user, to.uid, to.group, to.gid
        );
    }
    for (svc, b) in config.services.iter().zip(&bindings) {
        info!(
            "listening service={} addr={} workers={}",
            svc.name,
            b.bound,
            listeners.len()
        );
    }
    let config = Arc::new(config);
    let mut current = config.clone();

    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Signals)?;
    // Handlers go in before any worker starts, so a signal sent as soon as `ready` is
    // logged is never met by the default action.
    let (mut term, mut int, mut usr1, mut hup) = {
        let _rt = signals.enter();
        (
            signal(SignalKind::terminate()).map_err(ServerError::Signals)?,
            signal(SignalKind::interrupt()).map_err(ServerError::Signals)?,
            signal(SignalKind::user_defined1()).map_err(ServerError::Signals)?,
            signal(SignalKind::hangup()).map_err(ServerError::Signals)?,
        )
    };
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel();
    let mut controls = Vec::with_capacity(listeners.len());
    let mut threads = Vec::with_capacity(listeners.len());
    for (id, worker_listeners) in listeners.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = WorkerSpec {
            id,
            cpu: config.global.worker_cpus.get(id).copied(),
            config: config.clone(),
            listeners: worker_listeners,
            metrics: metrics.clone(),
        };
        let started = started_tx.clone();
        let exited = ExitNotice(id, exited_tx.clone());
        let handle = thread::Builder::new()
            .name(format!("tlsfront-w{id}"))
            .spawn(move || {
                let _exited = exited;
                worker::run(spec, rx, started)
            })
            .map_err(ServerError::Spawn)?;
        controls.push(tx);
        threads.push(handle);
    }
    drop((started_tx, exited_tx));
    let ready = started_rx.iter().take(threads.len()).count();
    if ready < threads.len() {
        stop_workers(&controls, threads);
        return Err(ServerError::WorkerDied(ready));
    }
    // The socket file goes when this function returns, however it returns.
    let _identity_file = match identity_listener {
        Some((listener, file)) => {
            let senders = controls.clone();
            if let Err(e) = identity::spawn_server(listener, move |q| ask_workers(&senders, q)) {
                stop_workers(&controls, threads);
                return Err(ServerError::Spawn(e));
            }
            info!("identity lookup listening path={}", file.0.display());
            Some(file)
        }
        None => None,
    };
    // The admin socket file (if any) goes with the process, like the identity socket's.
    let _admin_file = match admin_listener {
        Some(listener) => {
            let at = listener.describe();
            let file = match &listener {
                AdminListener::Unix(_) => Some(SocketFile(PathBuf::from(&at))),
                AdminListener::Tcp(_) => None,
            };
            if let Err(e) = admin::spawn(listener, metrics.clone()) {
                stop_workers(&controls, threads);
                return Err(ServerError::Spawn(e));
            }
            info!("admin listening addr={at}");
            file
        }
        None => None,
    };
    metrics.process.ready.store(true, Relaxed);
    info!("ready workers={ready}");

    let workers = controls.len();
    let (mut reloads_ok, mut reloads_failed) = (0u64, 0u64);
    let died = signals.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => return None,
                _ = int.recv() => return None,
                Some(id) = exited_rx.recv() => return Some(id),
                _ = usr1.recv() => {
                    info!("process stats reloads_ok={reloads_ok} reloads_failed={reloads_failed}");
                    for c in &controls {
                        let _ = c.send(Control::Stats);
                    }
                }
                _ = hup.recv() => match plan_reload(&source, workers, &bindings, &current, &mut echo) {
                    Ok((orders, new_bindings, new_config)) => {
                        publish_ticketers(&metrics, &new_config);
                        current = new_config;
                        for (c, order) in controls.iter().zip(orders) {
                            let _ = c.send(Control::Reload(order));
                        }
                        bindings = new_bindings;
                        reloads_ok += 1;
                        metrics.process.reloads_ok.store(reloads_ok, Relaxed);
                        info!("reload ok: {} service(s); open connections keep their settings", bindings.len());
                    }
                    Err(e) => {
                        reloads_failed += 1;
                        metrics.process.reloads_failed.store(reloads_failed, Relaxed);
                        error!("reload failed, still serving the previous configuration: {e}");
                    }
                },
            }
        }
    });
    metrics.process.ready.store(false, Relaxed);
    metrics.process.draining.store(true, Relaxed);
    let delay = current.global.shutdown_delay;
    if died.is_none() && !delay.is_zero() {
        // Load balancers see /ready fail and stop sending; connections that still come
        // meanwhile are served. A second SIGTERM or SIGINT skips the rest of the wait.
        info!("shutting down in {delay:?}: /ready reports draining, listeners still accept");
        signals.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
    }
    match died {
        None => info!("shutting down: no new connections, draining open ones"),
        Some(id) => error!("worker {id} stopped unexpectedly: shutting down the others"),
    }
    stop_workers(&controls, threads);
    if let Some(id) = died {
        return Err(ServerError::WorkerDied(id));
    }
    info!("drained, exiting");
    Ok(())
}
