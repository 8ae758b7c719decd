//! One client connection: handshake, backend connect, then the relay in both directions.
//!
//! The opening phase (everything before the relay) runs in its own boxed future, so the
//! connection's task keeps only the relay's small state once the connection is established
//! (see `super::relay`).

use std::cell::Cell;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::{debug, info, warn};

use super::plain_end::{PlainEnd, TlsEnd};
use super::relay::relay;
use super::{client_mode, ktls_relay, passthrough, ServiceRt, WorkerCtx};
use crate::config::{Route, Service};
use crate::conn::client_hello::{self, Peek};
use crate::conn::close::CloseReason;
use crate::conn::offload::{self, Offload, UserspaceReason};
use crate::conn::proxy_in::{self, Inbound};
use crate::conn::starttls_offer::{Greeting, GreetingStep, Offer, OfferDialogue, Step};
use crate::conn::tls::{ClientTls, OutBuf, ServerTls, Side, Tls, TlsError, MAX_RECORD_WIRE};
use crate::io::connect::{self, ConnectError};
use crate::io::ktls;
use crate::io::sockopt;
use crate::obs;
use crate::obs::metrics::{ConnectFailure, OffloadLabel};
use crate::route::identity;
use crate::route::pool::{HealthChange, Pool};
use crate::route::proxy_header::{self, ConnInfo, TlsSummary};
use crate::tls::client_auth::{self, Identity, Refusal};

/// Releases the connection's slot in the worker's books however the task ends.
pub(super) struct Slot {
    ctx: Rc<WorkerCtx>,
    rt: Rc<ServiceRt>,
}

impl Slot {
    /// Takes over the counts the accept loop made for this connection.
    pub(super) fn new(ctx: &Rc<WorkerCtx>, rt: &Rc<ServiceRt>) -> Slot {
        Slot {
            ctx: ctx.clone(),
            rt: rt.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        obs::dec(&self.ctx.stats.active);
        obs::dec(&self.rt.stats.active);
        obs::inc(&self.ctx.stats.closed);
        self.ctx.conn_closed.notify_waiters();
    }
}

/// First size of the output buffer while a connection opens: a handshake flight fits (it
/// grows for a longer certificate chain).
const INITIAL_OUT: usize = 4096;

/// A connection's buffers while it opens (PROXY header, STARTTLS, handshake): one record's
/// worth, not the relay's transfer size, so many concurrent handshakes stay small. The relay
/// frees them and borrows pooled buffers per transfer instead.
pub(super) struct Buffers {
    /// Bytes from the peer not yet processed (room for one whole record).
    pub(super) incoming: Vec<u8>,
    /// Plaintext the peer sent with its last handshake flight (usually none).
    pub(super) upstream: Vec<u8>,
    /// Bytes to the peer, filled by rustls.
    pub(super) out: OutBuf,
    /// `out`'s second storage, swapped in while a write runs (see [`flush`]).
    pub(super) out_spare: Vec<u8>,
}

impl Buffers {
    pub(super) fn new() -> Self {
        Buffers {
            incoming: Vec::with_capacity(MAX_RECORD_WIRE),
            upstream: Vec::new(),
            out: OutBuf::with_capacity(INITIAL_OUT),
            out_spare: Vec::new(),
        }
    }
}

/// A connection counted against its backend (for least-connections) while it lives.
pub(super) struct PoolSlot<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Drop for PoolSlot<'_> {
    fn drop(&mut self) {
        self.pool.closed(self.index);
    }
}

/// A connection's id in the logs: `worker-sequence`, unique in the process's life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnId {
    worker: usize,
    seq: u64,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.worker, self.seq)
    }
}

impl WorkerCtx {
    /// The next connection's id on this worker.
    pub(super) fn next_conn_id(&self) -> ConnId {
        let seq = self.conns_seen.get() + 1;
        self.conns_seen.set(seq);
        ConnId {
            worker: self.id,
            seq,
        }
    }
}

/// Identity, bytes and route of one connection, for its log lines.
pub(super) struct Tally {
    /// Carried by every log line about the connection (`conn=`).
    pub(super) id: ConnId,
    pub(super) up: Cell<u64>,
    pub(super) down: Cell<u64>,
    /// The client a PROXY header named (the TCP peer was its load balancer).
    pub(super) client: Cell<Option<SocketAddr>>,
    /// The route the ClientHello chose (index into the service's routes).
    pub(super) route: Cell<Option<usize>>,
    /// Version, suite and resumption of a completed handshake (for the access log).
    pub(super) tls: Cell<Option<(&'static str, &'static str, bool)>>,
}

pub(super) async fn serve(
    ctx: Rc<WorkerCtx>,
    rt: Rc<ServiceRt>,
    client: TcpStream,
    peer: SocketAddr,
) {
    let slot = Slot::new(&ctx, &rt);
    let svc = rt.svc();
    let started = Instant::now();
    let tally = Tally {
        id: ctx.next_conn_id(),
        up: Cell::default(),
        down: Cell::default(),
        client: Cell::default(),
        route: Cell::default(),
        tls: Cell::default(),
    };
    let conn = tally.id;
    debug!(worker = ctx.id, %conn, service = %svc.name, %peer, "accepted");
    // Socket options (nodelay, keepalive, buffer sizes) came with the listener's.
    let client_mode = rt.client_tls.is_some();
    let reason = if client_mode {
        // Boxed: the task's own future stays the size of the server-mode relay.
        Box::pin(client_mode::run(&ctx, &rt, &client, peer, &tally)).await
    } else {
        run(&ctx, &rt, &client, peer, &tally).await
    };
    // Ends any op still in flight on the client socket so its fd is released now.
    let _ = client.shutdown(Shutdown::Both);

    // The relay counts from the TLS side's view; in client mode that is the server, so
    // its `down` is what the local client sent.
    let (up, down) = if client_mode {
        (tally.down.get(), tally.up.get())
    } else {
        (tally.up.get(), tally.down.get())
    };
    // Behind a load balancer that sent a PROXY header, `peer` is the client it named.
    let (peer, proxied_by) = match tally.client.get() {
        Some(client) => (client, peer.to_string()),
        None => (peer, "-".to_string()),
    };
    let route = tally
        .route
        .get()
        .and_then(|r| svc.routes.get(r))
        .map_or("-", |r| r.name.as_str());
    obs::add(&ctx.stats.bytes_client_to_backend, up);
    obs::add(&ctx.stats.bytes_backend_to_client, down);
    rt.stats.closed(reason, up, down);
    let duration_ms = started.elapsed().as_millis() as u64;
    if let Some(log) = &rt.access_log {
        let (version, suite, resumed) = match tally.tls.get() {
            Some((v, s, r)) => (v, s, Some(r)),
            None => ("-", "-", None),
        };
        log.record(&crate::obs::access::Entry {
            conn: &conn,
            service: &svc.name,
            route,
            peer: &peer.to_string(),
            proxied_by: &proxied_by,
            version,
            suite,
            resumed,
            bytes_in: up,
            bytes_out: down,
            duration_ms,
            reason: reason.as_str(),
        });
    }
    if !reason.is_clean() {
        obs::inc(&ctx.stats.closed_with_error);
    }
    if reason.is_failure() {
        warn!(worker = ctx.id, %conn, service = %svc.name, %route, %peer, %proxied_by, bytes_in = up, bytes_out = down, duration_ms, reason = %reason, "closed");
    } else {
        info!(worker = ctx.id, %conn, service = %svc.name, %route, %peer, %proxied_by, bytes_in = up, bytes_out = down, duration_ms, reason = %reason, "closed");
    }
    drop(slot);
}

async fn run(
    ctx: &WorkerCtx,
    rt: &ServiceRt,
    client: &TcpStream,
    peer: SocketAddr,
    tally: &Tally,
) -> CloseReason {
    // The opening phase's state (buffers, TLS handshake, PROXY header, STARTTLS...) lives in
    // its own allocation, freed before the relay: an idle connection keeps only the relay's.
    // (Scoped, so the `Option` a borrow pinned in the task's state is gone before the relay.)
    let ready = {
        let mut ready = None;
        let reason = Box::pin(open(ctx, rt, client, peer, tally, &mut ready)).await;
        match ready {
            Some(ready) => ready,
            None => return reason,
        }
    };
    let Ready {
        established,
        backend,
        offload,
        _slot,
        _registered,
    } = ready;
    let reason = match offload {
        Offload::Kernel { .. } => {
            let svc = rt.svc();
            Box::pin(ktls_relay::run(
                ctx,
                svc,
                client,
                &backend,
                established,
                tally,
            ))
            .await
        }
        Offload::Userspace(_) => {
            relay(ctx, rt, client, PlainEnd::Tcp(&backend), established, tally).await
        }
    };
    let _ = backend.shutdown(Shutdown::Both);
    reason
}

/// A connection established with a plain backend, ready for the relay.
struct Ready<'r, 'c> {
    established: Established<rustls::server::UnbufferedServerConnection>,
    backend: TcpStream,
    offload: Offload,
    _slot: PoolSlot<'r>,
    _registered: Option<identity::Registered<'c>>,
}

/// Everything before the relay: PROXY header, STARTTLS, ClientHello, handshake, backend
/// connection. Fills `ready` when the relay is next (a plain backend); otherwise the
/// connection ends here (refused or failed, or relayed already: pass-through and
/// re-encryption relay inside this phase) and the reason is returned.
async fn open<'r, 'c>(
    ctx: &'c WorkerCtx,
    rt: &'r ServiceRt,
    client: &TcpStream,
    peer: SocketAddr,
    tally: &Tally,
    ready: &mut Option<Ready<'r, 'c>>,
) -> CloseReason {
    let svc = rt.svc();
    let began = Instant::now();
    let mut bufs = Buffers::new();
    let mut session: Option<ServerTls> = None;
    let mut peer = peer;
    let hello_and_handshake = async {
        if let Some(nets) = &svc.accept_proxy {
            if proxy_in::is_allowed_source(nets, peer.ip()) {
                if let Some(named) = read_proxy_header(client, &mut bufs, tally.id).await? {
                    peer = named;
                    tally.client.set(Some(named));
                }
            }
        }
        if let Some(offer) = svc.starttls_offer {
            offer_starttls(client, offer, &svc.name, &mut bufs, tally.id).await?;
        }
        // The ClientHello picks the route and its config before rustls sees it.
        let chosen = read_client_hello(client, rt, &mut bufs, &mut session, tally.id).await?;
        tally.route.set(Some(chosen.route));
        let Some(tls) = session.as_mut() else {
            return Ok(Opening::Passthrough(chosen));
        };
        handshake(client, tls, &mut bufs, tally.id)
            .await
            .map(|peer_closed| Opening::Terminated(chosen, peer_closed))
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(svc.tunables.handshake_timeout, hello_and_handshake) => r,
        _ = ctx.force_close.notified() => Ok(Err(CloseReason::DrainTimeout)),
    };
    let finished = session.as_ref().is_some_and(|t| !t.is_handshaking());
    let opening = match handshake {
        Ok(Ok(opening)) => opening,
        // The handshake finished; the client left while we sent its last flight
        // (tickets), as `openssl s_time` does.
        Ok(Err(reason)) if finished => {
            obs::inc(&ctx.stats.handshakes);
            if let Some(tls) = &session {
                let resumed = tls.info().resumed;
                rt.stats
                    .handshake_done(tls.negotiated_suite(), resumed, began.elapsed());
            }
            return reason;
        }
        Ok(Err(reason)) => {
            obs::inc(&ctx.stats.handshake_failures);
            rt.stats.handshake_failed(reason);
            if reason.is_client_cert_refusal() {
                obs::inc(&ctx.stats.client_cert_rejected);
            } else if reason == CloseReason::SniUnknown {
                obs::inc(&ctx.stats.sni_rejected);
            }
            return reason;
        }
        Err(_elapsed) => {
            obs::inc(&ctx.stats.handshake_timeouts);
            rt.stats.handshake_failed(CloseReason::HandshakeTimeout);
            return CloseReason::HandshakeTimeout;
        }
    };
    let (Chosen { route, sni }, peer_closed) = match opening {
        Opening::Passthrough(chosen) => {
            obs::inc(&ctx.stats.passthrough);
            return passthrough(ctx, rt, client, peer, chosen, bufs, tally).await;
        }
        Opening::Terminated(chosen, peer_closed) => (chosen, peer_closed),
    };
    let Some(mut tls) = session else {
        return CloseReason::TlsError;
    };
    obs::inc(&ctx.stats.handshakes);
    let info = tls.info();
    if info.resumed {
        obs::inc(&ctx.stats.handshakes_resumed);
    }
    rt.stats
        .handshake_done(tls.negotiated_suite(), info.resumed, began.elapsed());
    tally
        .tls
        .set(Some((info.version, info.suite, info.resumed)));
    // A verified certificate whose names cannot be read is refused rather than treated as
    // none: its holder would otherwise reach backends as an anonymous client.
    let identity = match tls.client_certificate().map(Identity::from_der) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            warn!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, error = %e, "cannot read the client certificate's names: refused");
            obs::inc(&ctx.stats.client_cert_rejected);
            return CloseReason::ClientCertInvalid;
        }
    };
    let route_cfg = &svc.routes[route];
    debug!(
        worker = ctx.id, conn = %tally.id, service = %svc.name, route = %route_cfg.name, %peer, version = info.version,
        suite = info.suite, sni = sni.as_deref().unwrap_or("-"),
        alpn = info.alpn.as_deref().unwrap_or("-"), resumed = info.resumed,
        client_cn = identity.as_ref().and_then(|i| i.cn.as_deref()).unwrap_or("-"),
        "handshake done"
    );

    // A finished handshake always has a suite; no panic path on network input regardless.
    let Some(suite) = tls.negotiated_suite() else {
        return CloseReason::TlsError;
    };
    let mut offload = if route_cfg.backend_tls.is_some() {
        Offload::Userspace(UserspaceReason::Reencrypt)
    } else {
        offload::decide(svc.ktls, rt.config.kernel_tls.as_ref(), suite)
    };
    let mut peer_closed = peer_closed;
    if let Offload::Kernel { .. } = offload {
        // The kernel must start at a record boundary.
        let finish = ktls_relay::finish_partial_record(client, &mut tls, &mut bufs);
        match tokio::time::timeout(svc.tunables.handshake_timeout, finish).await {
            Ok(Ok(closed)) => peer_closed |= closed,
            Ok(Err(reason)) => return reason,
            Err(_) => return CloseReason::HandshakeTimeout,
        }
        if !bufs.out.is_empty()
            && flush(client, &mut bufs.out, &mut bufs.out_spare)
                .await
                .is_err()
        {
            return CloseReason::ClientIoError;
        }
    }

    let upstream = route_cfg.upstream_for(identity.as_ref());
    let (backend, _slot) = match connect_upstream(ctx, rt, route, upstream, peer, tally.id).await {
        Ok(connected) => connected,
        Err(reason) => {
            // Tell the client cleanly: close_notify, then FIN.
            if tls.close_notify(&mut bufs.incoming, &mut bufs.out).is_ok() {
                let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
            }
            let _ = client.shutdown(Shutdown::Write);
            return reason;
        }
    };
    let summary = TlsSummary {
        version: info.version,
        cipher: info.suite,
        client_cert: identity.as_ref(),
        resumed: info.resumed,
    };
    let conn = ConnInfo {
        client: peer,
        local: local_addr(client, svc),
        sni: sni.as_deref(),
        alpn: info.alpn.as_deref().map(str::as_bytes),
        tls: Some(summary),
    };
    let _registered = register_identity(ctx, rt, route, &backend, &conn);
    if let Err(reason) = send_proxy_header(ctx, svc, route_cfg, &backend, &conn, tally.id).await {
        if tls.close_notify(&mut bufs.incoming, &mut bufs.out).is_ok() {
            let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
        }
        let _ = client.shutdown(Shutdown::Write);
        return reason;
    }

    // A STARTTLS service: the client had tlsfront's greeting; the backend's is taken here.
    if let Some(offer) = svc.starttls_offer.filter(|o| Greeting::expected(*o)) {
        if let Err(why) =
            take_backend_greeting(&backend, offer, svc.tunables.handshake_timeout).await
        {
            warn!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, error = %why, "backend greeting");
            if tls.close_notify(&mut bufs.incoming, &mut bufs.out).is_ok() {
                let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
            }
            let _ = client.shutdown(Shutdown::Write);
            return CloseReason::BackendIoError;
        }
    }

    // Re-encryption: the backend's own TLS handshake, verified as configured.
    let backend_tls = match backend_handshake(ctx, rt, route, &backend, tally.id).await {
        Ok(b) => b,
        Err(reason) => {
            if tls.close_notify(&mut bufs.incoming, &mut bufs.out).is_ok() {
                let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
            }
            let _ = client.shutdown(Shutdown::Write);
            return reason;
        }
    };

    if let Offload::Kernel { .. } = offload {
        if let Err(e) = ktls::attach_ulp(client) {
            offload = Offload::Userspace(UserspaceReason::InstallFailed(
                e.raw_os_error().unwrap_or(0),
            ));
        }
    }
    count_offload(ctx, rt, offload);
    match offload {
        Offload::Kernel { .. } => {
            info!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, offload = %"ktls", "offload")
        }
        Offload::Userspace(why) => {
            info!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, offload = %"userspace", reason = %why, "offload")
        }
    }

    let established = Established {
        tls: Box::new(tls),
        bufs,
        peer_closed,
    };
    if let Some(end) = &backend_tls {
        // Re-encryption relays here: its backend end borrows `backend`.
        let reason = relay(ctx, rt, client, PlainEnd::Tls(end), established, tally).await;
        let _ = backend.shutdown(Shutdown::Both);
        return reason;
    }
    *ready = Some(Ready {
        established,
        backend,
        offload,
        _slot,
        _registered,
    });
    CloseReason::Done
}

/// The TLS handshake with a re-encrypting route's backend (`None` for a plaintext one).
async fn backend_handshake<'b>(
    ctx: &WorkerCtx,
    rt: &ServiceRt,
    route: usize,
    backend: &'b TcpStream,
    conn: ConnId,
) -> Result<Option<TlsEnd<'b>>, CloseReason> {
    let svc = rt.svc();
    let (Some(side), Some(config)) = (
        &svc.routes[route].backend_tls,
        &rt.routes[route].backend_tls,
    ) else {
        return Ok(None);
    };
    let mut tls = ClientTls::new(config.clone(), side.server_name.clone())
        .map_err(|_| CloseReason::BackendTlsError)?;
    let mut bufs = Buffers::new();
    let done = tokio::time::timeout(
        svc.tunables.handshake_timeout,
        handshake(backend, &mut tls, &mut bufs, conn),
    )
    .await;
    match done {
        Ok(Ok(_)) => {
            debug!(worker = ctx.id, %conn, service = %svc.name, version = tls.info().version, "backend TLS handshake done");
            Ok(Some(TlsEnd::new(backend, tls, bufs.incoming, bufs.out)))
        }
        Ok(Err(reason)) => {
            let reason = match tls.last_error() {
                Some(rustls::Error::InvalidCertificate(e)) => {
                    warn!(worker = ctx.id, %conn, service = %svc.name, server = ?side.server_name, error = ?e, "backend certificate refused");
                    CloseReason::BackendCertInvalid
                }
                Some(e) => {
                    warn!(worker = ctx.id, %conn, service = %svc.name, error = %e, "backend TLS handshake failed");
                    CloseReason::BackendTlsError
                }
                None if reason == CloseReason::HandshakeEof => CloseReason::BackendTlsError,
                None => reason,
            };
            Err(reason)
        }
        Err(_) => Err(CloseReason::BackendTlsError),
    }
}

/// A pass-through route: the ClientHello (still in `bufs.incoming`) and everything after it
/// go to the backend untouched.
async fn passthrough(
    ctx: &WorkerCtx,
    rt: &ServiceRt,
    client: &TcpStream,
    peer: SocketAddr,
    chosen: Chosen,
    bufs: Buffers,
    tally: &Tally,
) -> CloseReason {
    let svc = rt.svc();
    let route_cfg = &svc.routes[chosen.route];
    let (backend, _slot) = match connect_upstream(ctx, rt, chosen.route, 0, peer, tally.id).await {
        Ok(connected) => connected,
        Err(reason) => return reason,
    };
    let conn = ConnInfo {
        client: peer,
        local: local_addr(client, svc),
        sni: chosen.sni.as_deref(),
        alpn: None,
        tls: None,
    };
    let _registered = register_identity(ctx, rt, chosen.route, &backend, &conn);
    if let Err(reason) = send_proxy_header(ctx, svc, route_cfg, &backend, &conn, tally.id).await {
        return reason;
    }
    info!(worker = ctx.id, conn = %tally.id, service = %svc.name, route = %route_cfg.name, %peer, "pass-through");
    let hello = bufs.incoming;
    let n = hello.len() as u64;
    let (res, _) = backend.write_all(hello).await;
    if res.is_err() {
        return CloseReason::BackendIoError;
    }
    tally.up.set(n);
    let reason = passthrough::relay(ctx, svc.tunables.idle_timeout, client, &backend, tally).await;
    let _ = backend.shutdown(Shutdown::Both);
    reason
}

/// The address the client connected to (the listener's when the socket cannot say).
fn local_addr(client: &TcpStream, svc: &Service) -> SocketAddr {
    sockopt::with_sockref(client, |s| s.local_addr())
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(svc.listen)
}

/// Connects to a backend of the route's upstream: the pool's order, failing over to the
/// next backend on error, all within one `connect_timeout`.
pub(super) async fn connect_upstream<'r>(
    ctx: &WorkerCtx,
    rt: &'r ServiceRt,
    route: usize,
    upstream: usize,
    peer: SocketAddr,
    conn: ConnId,
) -> Result<(TcpStream, PoolSlot<'r>), CloseReason> {
    let svc = rt.svc();
    let pool = &rt.routes[route].pools[upstream];
    let policy = &svc.routes[route].upstreams[upstream];
    // Built-in backends are resolved to addresses before workers start.
    let addrs = policy.backend.addrs();
    if addrs.is_empty() {
        return Err(CloseReason::BackendConnectError);
    }
    let deadline = Instant::now() + svc.tunables.connect_timeout;
    let mut last_error = ConnectError::TimedOut;
    let mut backend_addr = addrs[0];
    for i in pool.order(Instant::now()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        backend_addr = addrs[i];
        let mut forced = false;
        let attempt = tokio::select! {
            r = connect::connect(backend_addr, &svc.tunables, left) => r,
            _ = ctx.force_close.notified() => { forced = true; Err(ConnectError::TimedOut) }
        };
        match attempt {
            Ok(stream) => {
                if pool.connected(i) == HealthChange::Up {
                    info!(worker = ctx.id, %conn, service = %svc.name, backend = %backend_addr, "backend up");
                }
                return Ok((stream, PoolSlot { pool, index: i }));
            }
            Err(e) => {
                obs::inc(&ctx.stats.backend_connect_failures);
                rt.stats.backend_connect_failed(match e {
                    ConnectError::Refused => ConnectFailure::Refused,
                    ConnectError::TimedOut => ConnectFailure::Timeout,
                    ConnectError::Other(_) => ConnectFailure::Error,
                });
                if pool.failed(i, Instant::now()) == HealthChange::Down {
                    warn!(worker = ctx.id, %conn, service = %svc.name, backend = %backend_addr, retry_after = ?policy.pool.retry, "backend down");
                } else if addrs.len() > 1 {
                    debug!(worker = ctx.id, %conn, service = %svc.name, backend = %backend_addr, error = %e, "backend connect failed, trying the next");
                }
                last_error = e;
                if forced {
                    break;
                }
            }
        }
    }
    let reason = match last_error {
        ConnectError::Refused => CloseReason::BackendConnectRefused,
        ConnectError::TimedOut => CloseReason::BackendConnectTimeout,
        ConnectError::Other(_) => CloseReason::BackendConnectError,
    };
    warn!(worker = ctx.id, %conn, service = %svc.name, %peer, backend = %backend_addr, error = %last_error, reason = %reason, "backend connect failed");
    Err(reason)
}

/// Sends the route's PROXY header (if any) so the backend hears who the client is before
/// any of the client's bytes.
async fn send_proxy_header(
    ctx: &WorkerCtx,
    svc: &Service,
    route: &Route,
    backend: &TcpStream,
    conn: &ConnInfo<'_>,
    id: ConnId,
) -> Result<(), CloseReason> {
    let Some(version) = route.proxy_protocol else {
        return Ok(());
    };
    let Some(header) = proxy_header::encode(version, conn) else {
        warn!(worker = ctx.id, conn = %id, service = %svc.name, peer = %conn.client, "the PROXY header cannot carry this client's values (over 64 KiB): connection refused");
        return Err(CloseReason::BackendIoError);
    };
    let (res, _) = backend.write_all(header).await;
    res.map_err(|e| {
        warn!(worker = ctx.id, conn = %id, service = %svc.name, peer = %conn.client, error = %e, "writing the PROXY header to the backend failed");
        CloseReason::BackendIoError
    })
}

/// Makes the connection known to the identity lookup (when `identity_socket` is set) for as
/// long as the returned guard lives.
fn register_identity<'c>(
    ctx: &'c WorkerCtx,
    rt: &ServiceRt,
    route: usize,
    backend: &TcpStream,
    conn: &ConnInfo<'_>,
) -> Option<identity::Registered<'c>> {
    rt.config.global.identity_socket.as_ref()?;
    let (local, remote) = sockopt::with_sockref(backend, |s| {
        Ok::<_, std::io::Error>((s.local_addr()?, s.peer_addr()?))
    })
    .ok()?;
    let (local, remote) = (local.as_socket()?, remote.as_socket()?);
    let svc = rt.svc();
    let tls = conn.tls.as_ref();
    let record = identity::Record {
        client: conn.client,
        service: svc.name.clone(),
        route: svc.routes[route].name.clone(),
        sni: conn.sni.map(str::to_owned),
        tls_version: tls.map(|t| t.version.replace('_', ".")),
        cipher: tls.map(|t| t.cipher.to_owned()),
        client_cert: tls
            .and_then(|t| t.client_cert)
            .map(identity::CertRecord::from),
    };
    Some(ctx.identities.register(local.port(), remote, record))
}

pub(super) fn count_offload(ctx: &WorkerCtx, rt: &ServiceRt, offload: Offload) {
    rt.stats.offloaded(match offload {
        Offload::Kernel { .. } => OffloadLabel::Ktls,
        Offload::Userspace(UserspaceReason::Disabled) => OffloadLabel::Disabled,
        Offload::Userspace(UserspaceReason::KernelLacksTlsUlp) => OffloadLabel::KernelLacksTlsUlp,
        Offload::Userspace(UserspaceReason::CipherUnsupported) => OffloadLabel::CipherUnsupported,
        Offload::Userspace(UserspaceReason::InstallFailed(_)) => OffloadLabel::InstallFailed,
        Offload::Userspace(UserspaceReason::Reencrypt) => OffloadLabel::Reencrypt,
    });
    let s = &ctx.stats;
    obs::inc(match offload {
        Offload::Kernel { .. } => &s.offload_ktls,
        Offload::Userspace(UserspaceReason::Disabled) => &s.offload_userspace_disabled,
        Offload::Userspace(UserspaceReason::KernelLacksTlsUlp) => {
            &s.offload_userspace_kernel_lacks_tls_ulp
        }
        Offload::Userspace(UserspaceReason::CipherUnsupported) => {
            &s.offload_userspace_cipher_unsupported
        }
        Offload::Userspace(UserspaceReason::InstallFailed(_)) => {
            &s.offload_userspace_install_failed
        }
        Offload::Userspace(UserspaceReason::Reencrypt) => &s.offload_userspace_reencrypt,
    });
}

/// The route a ClientHello chose.
struct Chosen {
    /// Index into the service's routes.
    route: usize,
    sni: Option<Box<str>>,
}

/// How the connection opened.
enum Opening {
    /// A terminating route's handshake is done; `true`: close_notify already arrived along
    /// with the client's last handshake flight.
    Terminated(Chosen, bool),
    /// A pass-through route: the ClientHello is in the buffer, untouched.
    Passthrough(Chosen),
}

/// TLS alert unrecognized_name (112), fatal, as a plaintext record (before any ServerHello).
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// Speaks the protocol's pre-TLS part with the client until it asks for STARTTLS (what the
/// client already sent is in `bufs.incoming`; it is consumed). `Err` ends the connection.
async fn offer_starttls(
    client: &TcpStream,
    offer: Offer,
    name: &str,
    bufs: &mut Buffers,
    conn: ConnId,
) -> Result<(), CloseReason> {
    let mut dialogue = OfferDialogue::new(offer, name);
    let mut input = std::mem::take(&mut bufs.incoming);
    loop {
        let step = dialogue.received(&input);
        input.clear();
        match step {
            Step::Send(bytes) => {
                let (res, _) = client.write_all(bytes).await;
                res.map_err(|_| CloseReason::ClientIoError)?;
            }
            Step::NeedMore => {
                let (res, buf) = read_append(client, input).await;
                input = buf;
                match res {
                    Ok(0) | Err(_) => return Err(CloseReason::HandshakeEof),
                    Ok(_) => {}
                }
            }
            Step::StartTls(bytes) => {
                let (res, _) = client.write_all(bytes).await;
                res.map_err(|_| CloseReason::ClientIoError)?;
                bufs.incoming = input;
                return Ok(());
            }
            Step::Close(bytes, why) => {
                if !bytes.is_empty() {
                    let _ = client.write_all(bytes).await;
                }
                let _ = client.shutdown(Shutdown::Write);
                debug!(%conn, reason = why, "closed before STARTTLS");
                return Err(if why == "client quit" {
                    CloseReason::HandshakeEof
                } else {
                    CloseReason::StarttlsFailed
                });
            }
        }
    }
}

/// Reads and drops the backend's greeting (the client already had tlsfront's).
async fn take_backend_greeting(
    backend: &TcpStream,
    offer: Offer,
    timeout: Duration,
) -> Result<(), String> {
    let mut greeting = Greeting::new(offer);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let read = tokio::time::timeout(timeout, read_append(backend, buf)).await;
        let Ok((res, b)) = read else {
            return Err("no greeting from the backend".to_owned());
        };
        buf = b;
        match res {
            Ok(0) => return Err("the backend closed before its greeting".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        match greeting.received(&buf) {
            GreetingStep::NeedMore => {}
            GreetingStep::Taken(rest) if rest.is_empty() => return Ok(()),
            GreetingStep::Taken(rest) => {
                return Err(format!(
                    "the backend sent {} byte(s) after its greeting, unasked",
                    rest.len()
                ))
            }
            GreetingStep::Refused(why) => return Err(why),
        }
    }
}

/// Reads the PROXY header an allowed load balancer must send first and removes it from
/// `bufs.incoming` (what follows stays for the ClientHello). Returns the client it names
/// (`None` for a LOCAL / UNKNOWN header).
async fn read_proxy_header(
    client: &TcpStream,
    bufs: &mut Buffers,
    conn: ConnId,
) -> Result<Option<SocketAddr>, CloseReason> {
    loop {
        if bufs.incoming.len() == bufs.incoming.capacity() {
            return Err(CloseReason::ProxyHeaderInvalid);
        }
        let (res, incoming) = read_append(client, std::mem::take(&mut bufs.incoming)).await;
        bufs.incoming = incoming;
        match res {
            Ok(0) | Err(_) => return Err(CloseReason::HandshakeEof),
            Ok(_) => {}
        }
        match proxy_in::parse(&bufs.incoming) {
            Inbound::NeedMore => continue,
            Inbound::NotProxy => return Err(CloseReason::ProxyHeaderMissing),
            Inbound::Invalid(why) => {
                debug!(%conn, reason = why, "bad PROXY header");
                return Err(CloseReason::ProxyHeaderInvalid);
            }
            Inbound::Header { len, client } => {
                bufs.incoming.drain(..len);
                return Ok(client);
            }
        }
    }
}

/// Reads until the ClientHello can be peeked (starting with what `bufs.incoming` already
/// holds) and chooses the route by its SNI and ALPN offer. For a terminating route it creates
/// the session with the config the route (and the client's cipher order) calls for, in
/// `session`. The bytes stay in `bufs.incoming`, for rustls or the pass-through backend.
async fn read_client_hello(
    client: &TcpStream,
    rt: &ServiceRt,
    bufs: &mut Buffers,
    session: &mut Option<ServerTls>,
    conn: ConnId,
) -> Result<Chosen, CloseReason> {
    let svc = rt.svc();
    let mut must_read = bufs.incoming.is_empty();
    loop {
        if must_read {
            if bufs.incoming.len() == bufs.incoming.capacity() {
                return Err(CloseReason::ClientHelloTooLarge);
            }
            let (res, incoming) = read_append(client, std::mem::take(&mut bufs.incoming)).await;
            bufs.incoming = incoming;
            match res {
                Ok(0) | Err(_) => return Err(CloseReason::HandshakeEof),
                Ok(_) => {}
            }
        }
        must_read = true;
        let (route, sni, suites) = match client_hello::peek(&bufs.incoming) {
            Peek::NeedMore => continue,
            // A PROXY header where none is accepted gets its own reason.
            Peek::NotTls if proxy_in::parse(&bufs.incoming) != Inbound::NotProxy => {
                return Err(CloseReason::ProxyNotAllowed)
            }
            Peek::NotTls => return Err(CloseReason::TlsError),
            Peek::TooLarge => return Err(CloseReason::ClientHelloTooLarge),
            // Nothing to route by: the default route (rustls reassembles the hello).
            Peek::Fragmented => (svc.default_route, None, None),
            Peek::Hello(hello) => (
                svc.route_for(hello.sni, hello.alpn()),
                hello.sni.map(Box::from),
                Some(hello.cipher_suites()),
            ),
        };
        let Some(route) = route else {
            debug!(
                %conn,
                sni = sni.as_deref().unwrap_or("-"),
                "no route for this SNI: rejected"
            );
            reject_unknown_sni(client).await;
            return Err(CloseReason::SniUnknown);
        };
        let config = match suites {
            Some(suites) => rt.tls_for(route, suites),
            None => rt.routes[route].tls.as_ref(),
        };
        if let Some(config) = config {
            match ServerTls::new(config.clone()) {
                Ok(t) => *session = Some(t),
                Err(e) => {
                    warn!(%conn, error = %e, "cannot create TLS session");
                    return Err(CloseReason::TlsError);
                }
            }
        }
        return Ok(Chosen { route, sni });
    }
}

/// Refuses a client no route is for: the fatal alert unrecognized_name, then the close.
async fn reject_unknown_sni(client: &TcpStream) {
    let (res, _) = client.write_all(ALERT_UNRECOGNIZED_NAME.to_vec()).await;
    if res.is_ok() {
        let _ = client.shutdown(Shutdown::Write);
    }
}

/// Runs the handshake to completion with the TLS peer on `client`, starting with what
/// `bufs.incoming` already holds (a client side starts by producing its ClientHello).
/// Returns whether the peer already closed.
pub(super) async fn handshake<S: Side>(
    client: &TcpStream,
    tls: &mut Tls<S>,
    bufs: &mut Buffers,
    conn: ConnId,
) -> Result<bool, CloseReason> {
    let mut peer_closed = false;
    let mut have_input = true;
    loop {
        if !bufs.out.is_empty() {
            flush(client, &mut bufs.out, &mut bufs.out_spare)
                .await
                .map_err(|_| CloseReason::ClientIoError)?;
        }
        if !tls.is_handshaking() {
            return Ok(peer_closed);
        }
        if !std::mem::take(&mut have_input) {
            if bufs.incoming.len() == bufs.incoming.capacity() {
                return Err(CloseReason::TlsError); // handshake messages larger than we buffer
            }
            let (res, incoming) = read_append(client, std::mem::take(&mut bufs.incoming)).await;
            bufs.incoming = incoming;
            match res {
                Ok(0) | Err(_) => return Err(CloseReason::HandshakeEof),
                Ok(_) => {}
            }
        }
        match tls.read(&mut bufs.incoming, &mut bufs.upstream, &mut bufs.out) {
            Ok(progress) => peer_closed |= progress.peer_closed,
            Err(e) => {
                debug!(%conn, error = %e, "handshake failed");
                // Best effort: the alert rustls queued.
                let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
                let refusal = match &e {
                    TlsError::Protocol(err) => client_auth::refusal(err),
                    TlsError::NotWritable(_) => None,
                };
                return Err(match refusal {
                    Some(Refusal::Missing) => CloseReason::ClientCertMissing,
                    Some(Refusal::Invalid) => CloseReason::ClientCertInvalid,
                    Some(Refusal::Revoked) => CloseReason::ClientCertRevoked,
                    Some(Refusal::NotAllowed) => CloseReason::ClientNotAllowed,
                    None => CloseReason::TlsError,
                });
            }
        }
    }
}

/// Reads into `buf`'s spare capacity, after the bytes it already holds. (A plain
/// tokio-uring read fills the buffer from its start.) `buf` must not be full.
async fn read_append(stream: &TcpStream, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    let start = buf.len();
    let (res, slice) = stream.read(buf.slice(start..)).await;
    (res, slice.into_inner())
}

/// Writes all of `out` to the client, swapping storage with `spare` so no bytes are copied.
/// Nothing to send is a no-op (the storage may then be empty, which a write cannot take).
pub(super) async fn flush(
    client: &TcpStream,
    out: &mut OutBuf,
    spare: &mut Vec<u8>,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (buf, filled) = out.take(std::mem::take(spare));
    let (res, slice) = client.write_all(buf.slice(..filled)).await;
    *spare = slice.into_inner();
    res
}

/// A connection whose handshake is done, ready to relay.
pub(super) struct Established<S: Side> {
    /// Boxed: the relay futures that take it stay small (an idle connection's memory).
    pub(super) tls: Box<Tls<S>>,
    pub(super) bufs: Buffers,
    /// The client already sent close_notify.
    pub(super) peer_closed: bool,
}

/// Runs a relay's flows until they end, nothing is read for `idle`, or the worker's drain
/// time is up, whichever comes first.
///
/// `flows` is pinned by the caller rather than moved in: an async fn keeps a by-value
/// argument in its state next to the copy it polls, which doubled the flows' ~0.9 KB in
/// every idle connection's task.
pub(super) async fn supervise(
    ctx: &WorkerCtx,
    idle: Duration,
    last_activity: &Cell<Instant>,
    flows: std::pin::Pin<&mut impl std::future::Future<Output = CloseReason>>,
) -> CloseReason {
    let watchdog = async {
        loop {
            tokio::time::sleep_until((last_activity.get() + idle).into()).await;
            if last_activity.get() + idle <= Instant::now() {
                return CloseReason::IdleTimeout;
            }
        }
    };
    tokio::select! {
        reason = flows => reason,
        reason = watchdog => {
            obs::inc(&ctx.stats.idle_timeouts);
            reason
        }
        _ = ctx.force_close.notified() => CloseReason::DrainTimeout,
    }
}
