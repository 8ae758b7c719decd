//! Client mode (`mode = "client"`): a local plaintext connection goes out as TLS to the
//! service's backend — stunnel's `client = yes`. The same relay and kTLS hand-off as server
//! mode run with the sides swapped: the TLS peer is the remote server, the plaintext side is
//! the local client.
//!
//! Order: connect to the server (pool, failover), handshake (the server's certificate is
//! verified against `ca` for `server_name`; tickets are cached per worker and server name),
//! then relay. Half-close: local FIN → close_notify + FIN to the server; the server's
//! close_notify or FIN → FIN to the local client.

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use tokio_uring::net::TcpStream;
use tracing::{debug, info, warn};

use super::connection::{
    connect_upstream, count_offload, flush, handshake, Buffers, Established, Tally,
};
use super::plain_end::PlainEnd;
use super::relay::relay;
use super::{ktls_relay, ServiceRt, WorkerCtx};
use crate::config::ClientSide;
use crate::conn::close::CloseReason;
use crate::conn::offload::{self, Offload, UserspaceReason};
use crate::conn::starttls::{Dialogue, Next, Protocol};
use crate::conn::tls::ClientTls;
use crate::io::{ktls, sockopt};
use crate::obs;

/// The relay names its sides from server mode (client = TLS peer, backend = plaintext);
/// here the TLS peer is the server and the plaintext side the local client.
fn swapped(reason: CloseReason) -> CloseReason {
    match reason {
        CloseReason::ClientIoError => CloseReason::BackendIoError,
        CloseReason::BackendIoError => CloseReason::ClientIoError,
        CloseReason::ClientEofNoCloseNotify => CloseReason::ServerEofNoCloseNotify,
        CloseReason::TlsError => CloseReason::ServerTlsError,
        other => other,
    }
}

/// One client-mode connection, from the server connect to the end of the relay (the
/// caller, `connection::serve`, does the books and the closing log).
pub(super) async fn run(
    ctx: &WorkerCtx,
    rt: &ServiceRt,
    local: &TcpStream,
    peer: SocketAddr,
    tally: &Tally,
) -> CloseReason {
    let svc = rt.svc();
    let (Some(client), Some(config)) = (&svc.client, &rt.client_tls) else {
        return CloseReason::TlsError;
    };
    let (remote, _pool_slot) = match connect_upstream(ctx, rt, 0, 0, peer, tally.id).await {
        Ok(connected) => connected,
        Err(reason) => return reason,
    };
    if let Some((protocol, step_timeout)) = &client.starttls {
        if let Err(why) = starttls(&remote, protocol, client, *step_timeout).await {
            warn!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, error = %why, "STARTTLS with the server failed");
            let _ = remote.shutdown(Shutdown::Both);
            return CloseReason::StarttlsFailed;
        }
    }
    let mut tls = match ClientTls::new(config.clone(), client.server_name.clone()) {
        Ok(t) => t,
        Err(e) => {
            warn!(conn = %tally.id, error = %e, "cannot create TLS session");
            return CloseReason::TlsError;
        }
    };
    let began = Instant::now();
    let mut bufs = Buffers::new();
    let handshaken = tokio::select! {
        r = tokio::time::timeout(svc.tunables.handshake_timeout, handshake(&remote, &mut tls, &mut bufs, tally.id)) => r,
        _ = ctx.force_close.notified() => Ok(Err(CloseReason::DrainTimeout)),
    };
    let peer_closed = match handshaken {
        Ok(Ok(closed)) => closed,
        Ok(Err(reason)) => {
            obs::inc(&ctx.stats.handshake_failures);
            let reason = match tls.last_error() {
                Some(rustls::Error::InvalidCertificate(e)) => {
                    warn!(worker = ctx.id, conn = %tally.id, service = %svc.name, server = ?client.server_name, error = ?e, "server certificate refused");
                    CloseReason::ServerCertInvalid
                }
                Some(e) => {
                    warn!(worker = ctx.id, conn = %tally.id, service = %svc.name, server = ?client.server_name, error = %e, "TLS handshake with the server failed");
                    CloseReason::ServerTlsError
                }
                None => swapped(reason),
            };
            rt.stats.handshake_failed(reason);
            let _ = remote.shutdown(Shutdown::Both);
            return reason;
        }
        Err(_) => {
            obs::inc(&ctx.stats.handshake_timeouts);
            rt.stats.handshake_failed(CloseReason::HandshakeTimeout);
            let _ = remote.shutdown(Shutdown::Both);
            return CloseReason::HandshakeTimeout;
        }
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
    debug!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, version = info.version, suite = info.suite,
        alpn = info.alpn.as_deref().unwrap_or("-"), resumed = info.resumed, "handshake done");

    let Some(suite) = tls.negotiated_suite() else {
        return CloseReason::ServerTlsError;
    };
    let mut offload = offload::decide(svc.ktls, rt.config.kernel_tls.as_ref(), suite);
    let mut peer_closed = peer_closed;
    if let Offload::Kernel { .. } = offload {
        let finish = ktls_relay::finish_partial_record(&remote, &mut tls, &mut bufs);
        match tokio::time::timeout(svc.tunables.handshake_timeout, finish).await {
            Ok(Ok(closed)) => peer_closed |= closed,
            Ok(Err(reason)) => return swapped(reason),
            Err(_) => return CloseReason::HandshakeTimeout,
        }
        if !bufs.out.is_empty()
            && flush(&remote, &mut bufs.out, &mut bufs.out_spare)
                .await
                .is_err()
        {
            return CloseReason::BackendIoError;
        }
        if let Err(e) = ktls::attach_ulp(&remote) {
            offload = Offload::Userspace(UserspaceReason::InstallFailed(
                e.raw_os_error().unwrap_or(0),
            ));
        }
    }
    count_offload(ctx, rt, offload);
    let established = Established {
        tls: Box::new(tls),
        bufs,
        peer_closed,
    };
    let reason = match offload {
        Offload::Kernel { .. } => {
            info!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, offload = %"ktls", "offload");
            ktls_relay::run(ctx, svc, &remote, local, established, tally).await
        }
        Offload::Userspace(why) => {
            info!(worker = ctx.id, conn = %tally.id, service = %svc.name, %peer, offload = %"userspace", reason = %why, "offload");
            relay(ctx, rt, &remote, PlainEnd::Tcp(local), established, tally).await
        }
    };
    let _ = remote.shutdown(Shutdown::Both);
    swapped(reason)
}

/// Speaks the protocol's plaintext opening with the server until it agrees to start TLS.
/// Each read waits at most `step_timeout`.
async fn starttls(
    remote: &TcpStream,
    protocol: &Protocol,
    client: &ClientSide,
    step_timeout: Duration,
) -> Result<(), String> {
    // XMPP addresses the server's domain; the others name this side (an address literal,
    // as RFC 5321 allows for EHLO).
    let name = match (protocol, &client.server_name) {
        (Protocol::Xmpp, ServerName::DnsName(dns)) => dns.as_ref().to_owned(),
        _ => match sockopt::with_sockref(remote, |s| s.local_addr()) {
            Ok(addr) => match addr.as_socket() {
                Some(std::net::SocketAddr::V4(a)) => format!("[{}]", a.ip()),
                Some(std::net::SocketAddr::V6(a)) => format!("[IPv6:{}]", a.ip()),
                None => "localhost".to_owned(),
            },
            Err(_) => "localhost".to_owned(),
        },
    };
    let mut dialogue = Dialogue::new(protocol.clone(), &name);
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        match dialogue.received(&buf[..got]) {
            Next::Send(bytes) => {
                got = 0;
                let (res, _) = remote.write_all(bytes).await;
                res.map_err(|e| format!("writing to the server: {e}"))?;
            }
            Next::NeedMore => {
                let read = tokio::time::timeout(step_timeout, remote.read(buf)).await;
                let Ok((res, b)) = read else {
                    return Err(format!("no answer within {step_timeout:?}"));
                };
                buf = b;
                got = res.map_err(|e| format!("reading from the server: {e}"))?;
                if got == 0 {
                    return Err("the server closed the connection".to_owned());
                }
            }
            Next::Done => return Ok(()),
            Next::Fail(why) => return Err(why),
        }
    }
}
