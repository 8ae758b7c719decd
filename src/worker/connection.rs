//! One client connection: handshake, backend connect, then the relay in both directions.
//!
//! The relay is three cooperating futures on the worker's thread:
//! - `upstream`: client socket → [`ServerTls::read`] → backend socket;
//! - `downstream`: backend socket → [`ServerTls::encrypt`] → the shared [`OutBuf`];
//! - `client_writer`: the only writer of the client socket; sends the `OutBuf` in order.
//!
//! Backpressure: each side is read only after what was read before has been taken by the
//! other side (written to the backend, or handed to the client writer). Half-close: client
//! close_notify or FIN → shutdown(WR) on the backend while the other direction keeps going;
//! backend FIN → close_notify, then FIN to the client. Buffers are allocated once per
//! connection and never per chunk.

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::{debug, info, warn};

use super::plain_end::{PlainEnd, TlsEnd};
use super::{client_mode, ktls_relay, passthrough, ServiceRt, WorkerCtx};
use crate::config::{Route, Service};
use crate::conn::client_hello::{self, Peek};
use crate::conn::close::CloseReason;
use crate::conn::offload::{self, Offload, UserspaceReason};
use crate::conn::proxy_in::{self, Inbound};
use crate::conn::starttls_offer::{Greeting, GreetingStep, Offer, OfferDialogue, Step};
use crate::conn::tls::{
    out_capacity, ClientTls, OutBuf, ServerTls, Side, Tls, TlsError, MAX_RECORD_WIRE,
};
use crate::io::connect::{self, ConnectError};
use crate::io::ktls;
use crate::io::sockopt;
use crate::obs;
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
    pub(super) fn new(ctx: &Rc<WorkerCtx>, rt: &Rc<ServiceRt>) -> Slot {
        Slot {
            ctx: ctx.clone(),
            rt: rt.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let active = &self.rt.active;
        active.set(active.get().saturating_sub(1));
        obs::dec(&self.ctx.stats.active);
        obs::inc(&self.ctx.stats.closed);
        self.ctx.conn_closed.notify_waiters();
    }
}

/// First size of a connection's output buffer: a handshake flight fits.
const INITIAL_OUT: usize = 4096;

/// Per-connection buffers, sized once from the service's `buffer_size`.
pub(super) struct Buffers {
    /// Ciphertext from the client not yet processed (room for at least one whole record).
    pub(super) incoming: Vec<u8>,
    /// Where the next client read lands during the relay (see `Relay::upstream`).
    incoming_next: Vec<u8>,
    /// Plaintext client → backend: as large as `incoming`, since one `ServerTls::read`
    /// decrypts everything complete in it.
    pub(super) upstream: Vec<u8>,
    /// Plaintext backend → client.
    downstream: Vec<u8>,
    /// Ciphertext to the client, filled by rustls.
    pub(super) out: OutBuf,
    /// The client writer's second buffer, swapped with `out`'s storage while a write runs.
    pub(super) out_spare: Vec<u8>,
}

impl Buffers {
    pub(super) fn new(buffer_size: usize) -> Self {
        let out_cap = out_capacity(buffer_size);
        Buffers {
            incoming: Vec::with_capacity(buffer_size.max(MAX_RECORD_WIRE)),
            incoming_next: Vec::with_capacity(buffer_size.max(MAX_RECORD_WIRE)),
            upstream: Vec::with_capacity(buffer_size.max(MAX_RECORD_WIRE)),
            downstream: Vec::with_capacity(buffer_size),
            // Output storage starts small and grows to what the connection really sends
            // (rustls says how much it needs): an idle connection keeps little, a busy one
            // reaches `out_cap` once.
            out: OutBuf::with_capacity(INITIAL_OUT.min(out_cap)),
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

/// Bytes and timing of one connection, for its closing log line.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) up: Cell<u64>,
    pub(super) down: Cell<u64>,
    /// The client a PROXY header named (the TCP peer was its load balancer).
    pub(super) client: Cell<Option<SocketAddr>>,
    /// The route the ClientHello chose (index into the service's routes).
    pub(super) route: Cell<Option<usize>>,
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
    debug!(worker = ctx.id, service = %svc.name, %peer, "accepted");
    if let Err(e) = sockopt::with_sockref(&client, |s| {
        sockopt::apply_stream_tunables(&s, &svc.tunables)
    }) {
        debug!(%peer, error = %e, "could not set client socket options");
    }
    let tally = Tally::default();
    let client_mode = rt.client_tls.is_some();
    let reason = if client_mode {
        client_mode::run(&ctx, &rt, &client, peer, &tally).await
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
    let duration_ms = started.elapsed().as_millis() as u64;
    if !reason.is_clean() {
        obs::inc(&ctx.stats.closed_with_error);
    }
    if reason.is_failure() {
        warn!(worker = ctx.id, service = %svc.name, %route, %peer, %proxied_by, bytes_in = up, bytes_out = down, duration_ms, reason = %reason, "closed");
    } else {
        info!(worker = ctx.id, service = %svc.name, %route, %peer, %proxied_by, bytes_in = up, bytes_out = down, duration_ms, reason = %reason, "closed");
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
    let svc = rt.svc();
    let mut bufs = Buffers::new(svc.tunables.buffer_size);
    let mut session: Option<ServerTls> = None;
    let mut peer = peer;
    let hello_and_handshake = async {
        if let Some(nets) = &svc.accept_proxy {
            if proxy_in::is_allowed_source(nets, peer.ip()) {
                if let Some(named) = read_proxy_header(client, &mut bufs).await? {
                    peer = named;
                    tally.client.set(Some(named));
                }
            }
        }
        if let Some(offer) = svc.starttls_offer {
            offer_starttls(client, offer, &svc.name, &mut bufs).await?;
        }
        // The ClientHello picks the route and its config before rustls sees it.
        let chosen = read_client_hello(client, rt, &mut bufs, &mut session).await?;
        tally.route.set(Some(chosen.route));
        let Some(tls) = session.as_mut() else {
            return Ok(Opening::Passthrough(chosen));
        };
        handshake(client, tls, &mut bufs)
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
            return reason;
        }
        Ok(Err(reason)) => {
            obs::inc(&ctx.stats.handshake_failures);
            if reason.is_client_cert_refusal() {
                obs::inc(&ctx.stats.client_cert_rejected);
            } else if reason == CloseReason::SniUnknown {
                obs::inc(&ctx.stats.sni_rejected);
            }
            return reason;
        }
        Err(_elapsed) => {
            obs::inc(&ctx.stats.handshake_timeouts);
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
    let svc_stats = &rt.stats;
    if info.resumed {
        obs::inc(&ctx.stats.handshakes_resumed);
        obs::inc(&svc_stats.handshakes_resumed);
    } else {
        obs::inc(&svc_stats.handshakes_full);
    }
    // A verified certificate whose names cannot be read is refused rather than treated as
    // none: its holder would otherwise reach backends as an anonymous client.
    let identity = match tls.client_certificate().map(Identity::from_der) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            warn!(worker = ctx.id, service = %svc.name, %peer, error = %e, "cannot read the client certificate's names: refused");
            obs::inc(&ctx.stats.client_cert_rejected);
            return CloseReason::ClientCertInvalid;
        }
    };
    let route_cfg = &svc.routes[route];
    debug!(
        worker = ctx.id, service = %svc.name, route = %route_cfg.name, %peer, version = info.version,
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
    let (backend, _slot) = match connect_upstream(ctx, rt, route, upstream, peer).await {
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
    if let Err(reason) = send_proxy_header(ctx, svc, route_cfg, &backend, &conn).await {
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
            warn!(worker = ctx.id, service = %svc.name, %peer, error = %why, "backend greeting");
            if tls.close_notify(&mut bufs.incoming, &mut bufs.out).is_ok() {
                let _ = flush(client, &mut bufs.out, &mut bufs.out_spare).await;
            }
            let _ = client.shutdown(Shutdown::Write);
            return CloseReason::BackendIoError;
        }
    }

    // Re-encryption: the backend's own TLS handshake, verified as configured.
    let backend_tls = match backend_handshake(ctx, rt, route, &backend).await {
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
    count_offload(ctx, offload);
    match offload {
        Offload::Kernel { .. } => {
            info!(worker = ctx.id, service = %svc.name, %peer, offload = %"ktls", "offload")
        }
        Offload::Userspace(why) => {
            info!(worker = ctx.id, service = %svc.name, %peer, offload = %"userspace", reason = %why, "offload")
        }
    }

    let established = Established {
        tls,
        bufs,
        peer_closed,
    };
    let reason = match offload {
        Offload::Kernel { .. } => {
            ktls_relay::run(ctx, svc, client, &backend, established, tally).await
        }
        Offload::Userspace(_) => match &backend_tls {
            Some(end) => relay(ctx, svc, client, PlainEnd::Tls(end), established, tally).await,
            None => {
                relay(
                    ctx,
                    svc,
                    client,
                    PlainEnd::Tcp(&backend),
                    established,
                    tally,
                )
                .await
            }
        },
    };
    let _ = backend.shutdown(Shutdown::Both);
    reason
}

/// The TLS handshake with a re-encrypting route's backend (`None` for a plaintext one).
async fn backend_handshake<'b>(
    ctx: &WorkerCtx,
    rt: &ServiceRt,
    route: usize,
    backend: &'b TcpStream,
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
    let mut bufs = Buffers::new(svc.tunables.buffer_size);
    let done = tokio::time::timeout(
        svc.tunables.handshake_timeout,
        handshake(backend, &mut tls, &mut bufs),
    )
    .await;
    match done {
        Ok(Ok(_)) => {
            debug!(worker = ctx.id, service = %svc.name, version = tls.info().version, "backend TLS handshake done");
            Ok(Some(TlsEnd::new(backend, tls, bufs.incoming, bufs.out)))
        }
        Ok(Err(reason)) => {
            let reason = match tls.last_error() {
                Some(rustls::Error::InvalidCertificate(e)) => {
                    warn!(worker = ctx.id, service = %svc.name, server = ?side.server_name, error = ?e, "backend certificate refused");
                    CloseReason::BackendCertInvalid
                }
                Some(e) => {
                    warn!(worker = ctx.id, service = %svc.name, error = %e, "backend TLS handshake failed");
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
    let (backend, _slot) = match connect_upstream(ctx, rt, chosen.route, 0, peer).await {
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
    if let Err(reason) = send_proxy_header(ctx, svc, route_cfg, &backend, &conn).await {
        return reason;
    }
    info!(worker = ctx.id, service = %svc.name, route = %route_cfg.name, %peer, "pass-through");
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
                    info!(worker = ctx.id, service = %svc.name, backend = %backend_addr, "backend up");
                }
                return Ok((stream, PoolSlot { pool, index: i }));
            }
            Err(e) => {
                obs::inc(&ctx.stats.backend_connect_failures);
                if pool.failed(i, Instant::now()) == HealthChange::Down {
                    warn!(worker = ctx.id, service = %svc.name, backend = %backend_addr, retry_after = ?policy.pool.retry, "backend down");
                } else if addrs.len() > 1 {
                    debug!(worker = ctx.id, service = %svc.name, backend = %backend_addr, error = %e, "backend connect failed, trying the next");
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
    warn!(worker = ctx.id, service = %svc.name, %peer, backend = %backend_addr, error = %last_error, reason = %reason, "backend connect failed");
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
) -> Result<(), CloseReason> {
    let Some(version) = route.proxy_protocol else {
        return Ok(());
    };
    let Some(header) = proxy_header::encode(version, conn) else {
        warn!(worker = ctx.id, service = %svc.name, peer = %conn.client, "the PROXY header cannot carry this client's values (over 64 KiB): connection refused");
        return Err(CloseReason::BackendIoError);
    };
    let (res, _) = backend.write_all(header).await;
    res.map_err(|e| {
        warn!(worker = ctx.id, service = %svc.name, peer = %conn.client, error = %e, "writing the PROXY header to the backend failed");
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

pub(super) fn count_offload(ctx: &WorkerCtx, offload: Offload) {
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
                debug!(reason = why, "closed before STARTTLS");
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
                debug!(reason = why, "bad PROXY header");
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
                    warn!(error = %e, "cannot create TLS session");
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
                debug!(error = %e, "handshake failed");
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
pub(super) async fn flush(
    client: &TcpStream,
    out: &mut OutBuf,
    spare: &mut Vec<u8>,
) -> std::io::Result<()> {
    let (buf, filled) = out.take(std::mem::take(spare));
    let (res, slice) = client.write_all(buf.slice(..filled)).await;
    *spare = slice.into_inner();
    res
}

/// State the three relay futures share (one thread; no borrow is held across an await).
struct Shared<S: Side> {
    tls: Tls<S>,
    /// Client bytes rustls has not consumed yet. Kept here, not in the upstream future, so
    /// the write path can show rustls the same buffer (see `conn::tls` invariants).
    incoming: Vec<u8>,
    out: OutBuf,
    /// Backend sent FIN and its close_notify is queued: the writer ends after flushing.
    downstream_done: bool,
    /// A fatal TLS error's alert is queued: the writer flushes it, then the connection ends.
    abort_after_flush: Option<CloseReason>,
}

struct Relay<'a, S: Side> {
    client: &'a TcpStream,
    backend: PlainEnd<'a>,
    shared: RefCell<Shared<S>>,
    /// `out` has bytes (or an end) for the client writer.
    wake_writer: Notify,
    /// The client writer took `out`'s bytes: downstream may fill it again.
    wake_downstream: Notify,
    last_activity: Cell<Instant>,
    tally: &'a Tally,
}

/// A connection whose handshake is done, ready to relay.
pub(super) struct Established<S: Side> {
    pub(super) tls: Tls<S>,
    pub(super) bufs: Buffers,
    /// The client already sent close_notify.
    pub(super) peer_closed: bool,
}

/// Relays between the TLS peer on `client` and the plaintext side on `backend` (in client
/// mode the TLS peer is the remote server and the plaintext side the local client; the
/// caller reads the reasons accordingly).
pub(super) async fn relay<S: Side>(
    ctx: &WorkerCtx,
    svc: &Service,
    client: &TcpStream,
    backend: PlainEnd<'_>,
    established: Established<S>,
    tally: &Tally,
) -> CloseReason {
    let Established {
        tls,
        bufs,
        peer_closed,
    } = established;
    let Buffers {
        incoming,
        incoming_next,
        upstream,
        downstream,
        out,
        out_spare,
    } = bufs;
    let relay = Relay {
        client,
        backend,
        shared: RefCell::new(Shared {
            tls,
            incoming,
            out,
            downstream_done: false,
            abort_after_flush: None,
        }),
        wake_writer: Notify::new(),
        wake_downstream: Notify::new(),
        last_activity: Cell::new(Instant::now()),
        tally,
    };
    if !relay.shared.borrow().out.is_empty() {
        relay.wake_writer.notify_one();
    }
    let flows = async {
        match tokio::try_join!(
            relay.upstream(incoming_next, upstream, peer_closed),
            relay.downstream(downstream),
            relay.client_writer(out_spare),
        ) {
            Ok((up_end, (), ())) => up_end,
            Err(reason) => reason,
        }
    };
    supervise(ctx, svc.tunables.idle_timeout, &relay.last_activity, flows).await
}

/// Runs a relay's flows until they end, nothing is read for `idle`, or the worker's drain
/// time is up, whichever comes first.
pub(super) async fn supervise(
    ctx: &WorkerCtx,
    idle: Duration,
    last_activity: &Cell<Instant>,
    flows: impl std::future::Future<Output = CloseReason>,
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

impl<S: Side> Relay<'_, S> {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Client → backend. Ends when the client closes its sending side.
    ///
    /// Reads land in `next`, behind a copy of the unconsumed tail (at most a partial record),
    /// and then `next` becomes `shared.incoming`; meanwhile the write path still sees the old
    /// buffer. Same bytes either way, so rustls's offsets stay valid.
    async fn upstream(
        &self,
        mut next: Vec<u8>,
        mut plain: Vec<u8>,
        mut peer_closed: bool,
    ) -> Result<CloseReason, CloseReason> {
        loop {
            if !plain.is_empty() {
                let n = plain.len() as u64;
                let (res, buf) = self.backend.write_all(plain).await;
                plain = buf;
                res.map_err(|_| CloseReason::BackendIoError)?;
                self.tally.up.set(self.tally.up.get() + n);
                plain.clear();
                self.touch();
            }
            if peer_closed {
                self.backend.shutdown_write().await;
                return Ok(CloseReason::Done);
            }
            let progress = {
                let mut shared = self.shared.borrow_mut();
                let Shared {
                    tls, out, incoming, ..
                } = &mut *shared;
                let before = out.filled();
                let r = tls.read(incoming, &mut plain, out);
                if out.filled() != before {
                    self.wake_writer.notify_one();
                }
                r
            };
            match progress {
                Err(TlsError::Protocol(e)) => {
                    debug!(error = %e, "TLS error from client");
                    self.shared.borrow_mut().abort_after_flush = Some(CloseReason::TlsError);
                    self.wake_writer.notify_one();
                    return Ok(CloseReason::TlsError);
                }
                Err(e @ TlsError::NotWritable(_)) => {
                    debug!(error = %e, "TLS read failed");
                    return Err(CloseReason::TlsError);
                }
                Ok(p) => {
                    peer_closed = p.peer_closed;
                    if !plain.is_empty() || peer_closed {
                        continue;
                    }
                }
            }
            {
                let shared = self.shared.borrow();
                if shared.incoming.len() == shared.incoming.capacity() {
                    debug!(
                        buffered = shared.incoming.len(),
                        "client record does not fit the buffer"
                    );
                    return Err(CloseReason::TlsError);
                }
                next.clear();
                next.extend_from_slice(&shared.incoming);
            }
            let (res, buf) = read_append(self.client, next).await;
            next = buf;
            match res {
                Ok(0) => {
                    self.backend.shutdown_write().await;
                    return Ok(CloseReason::ClientEofNoCloseNotify);
                }
                Ok(_) => {
                    std::mem::swap(&mut self.shared.borrow_mut().incoming, &mut next);
                    self.touch();
                }
                Err(_) => return Err(CloseReason::ClientIoError),
            }
        }
    }

    /// Backend → client (via the client writer). Ends when the backend sends FIN.
    async fn downstream(&self, mut plain: Vec<u8>) -> Result<(), CloseReason> {
        loop {
            // Backpressure: read the backend only once the writer has taken the last chunk.
            while !self.shared.borrow().out.is_empty() {
                self.wake_downstream.notified().await;
            }
            let (res, buf) = self.backend.read(plain).await;
            plain = buf;
            let n = res.map_err(|_| CloseReason::BackendIoError)?;
            let mut shared = self.shared.borrow_mut();
            let Shared {
                tls, out, incoming, ..
            } = &mut *shared;
            if n == 0 {
                tls.close_notify(incoming, out).map_err(|e| {
                    debug!(error = %e, "cannot queue close_notify");
                    CloseReason::TlsError
                })?;
                shared.downstream_done = true;
                self.wake_writer.notify_one();
                return Ok(());
            }
            self.touch();
            tls.encrypt(incoming, &plain, out).map_err(|e| {
                debug!(error = %e, "cannot encrypt backend data");
                CloseReason::TlsError
            })?;
            self.tally.down.set(self.tally.down.get() + n as u64);
            plain.clear();
            self.wake_writer.notify_one();
        }
    }

    /// The single writer of the client socket: sends whatever `out` holds, in order.
    async fn client_writer(&self, mut spare: Vec<u8>) -> Result<(), CloseReason> {
        loop {
            let job = {
                let mut shared = self.shared.borrow_mut();
                if !shared.out.is_empty() {
                    Some(shared.out.take(std::mem::take(&mut spare)))
                } else if let Some(reason) = shared.abort_after_flush {
                    return Err(reason);
                } else if shared.downstream_done {
                    let _ = self.client.shutdown(Shutdown::Write);
                    return Ok(());
                } else {
                    None
                }
            };
            let Some((buf, filled)) = job else {
                self.wake_writer.notified().await;
                continue;
            };
            self.wake_downstream.notify_one();
            let (res, slice) = self.client.write_all(buf.slice(..filled)).await;
            spare = slice.into_inner();
            res.map_err(|_| CloseReason::ClientIoError)?;
            self.touch();
        }
    }
}
