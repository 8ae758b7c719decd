//! Start-up and lifecycle: bind every listener first (so a bad address fails before any
//! worker runs), start the workers, then turn signals into orders for them.
//!
//! SIGTERM / SIGINT: stop accepting, drain up to `drain_timeout`, exit 0.
//! SIGUSR1: every worker logs its counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{Backend, Config};
use crate::worker::{self, Control, WorkerListener, WorkerSpec};

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

/// Binds one SO_REUSEPORT listener per worker for each service. Port 0 is resolved once, by
/// the first bind, and the other workers join that port.
/// The listeners per worker, and each service's bound address.
type Bound = (Vec<Vec<WorkerListener>>, Vec<SocketAddr>);

fn bind_all(config: &Config) -> Result<Bound, ServerError> {
    let workers = config.global.workers;
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(config.services.len());
    for (index, svc) in config.services.iter().enumerate() {
        let mut addr = svc.listen;
        for listeners in per_worker.iter_mut() {
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
            crate::io::sockopt::apply_buffer_sizes(&socket2::SockRef::from(&socket), &svc.tunables)
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
                socket: socket.into(),
                shutdown_handle,
            });
        }
        bound.push(addr);
    }
    Ok((per_worker, bound))
}

/// Runs the proxy until a shutdown signal has been handled and every worker has drained.
pub fn run(mut config: Config) -> Result<(), ServerError> {
    for svc in &mut config.services {
        if svc.backend == Backend::BuiltinEcho {
            let addr = crate::echo::spawn_echo().map_err(ServerError::Echo)?;
            warn!(service = %svc.name, "no backend configured: started built-in loopback echo backend at {addr}");
            svc.backend = Backend::Addr(addr);
        }
        if svc.ephemeral_cert {
            warn!(
                service = %svc.name,
                "no certificate configured: using an ephemeral self-signed certificate for localhost/127.0.0.1 sha256={}",
                svc.cert_sha256
            );
        }
    }
    // Everything binds or nothing does: on error the sockets bound so far are dropped.
    let (listeners, bound) = bind_all(&config)?;
    for (svc, addr) in config.services.iter().zip(&bound) {
        info!(
            "listening service={} addr={} workers={}",
            svc.name,
            addr,
            listeners.len()
        );
    }
    let config = Arc::new(config);

    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Signals)?;
    // Handlers go in before any worker starts, so a signal sent as soon as `ready` is
    // logged is never met by the default action.
    let (mut term, mut int, mut usr1) = {
        let _rt = signals.enter();
        (
            signal(SignalKind::terminate()).map_err(ServerError::Signals)?,
            signal(SignalKind::interrupt()).map_err(ServerError::Signals)?,
            signal(SignalKind::user_defined1()).map_err(ServerError::Signals)?,
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
    info!("ready workers={ready}");

    let died = signals.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => return None,
                _ = int.recv() => return None,
                Some(id) = exited_rx.recv() => return Some(id),
                _ = usr1.recv() => {
                    for c in &controls {
                        let _ = c.send(Control::Stats);
                    }
                }
            }
        }
    });
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
