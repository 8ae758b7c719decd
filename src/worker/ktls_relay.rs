//! The kernel TLS path: after the rustls handshake the session keys go into the kernel
//! (TLS_TX/TLS_RX) and bytes move client ⇄ pipe ⇄ backend with io_uring splice, never
//! through userspace buffers.
//!
//! Rules from `shared/docs/ktls-kernel-facts.md` this code follows:
//! - hand off at a record boundary, with the exact next sequence numbers (a partial record
//!   already read is finished in userspace first: [`finish_partial_record`]);
//! - splice out of a kTLS socket only into an empty pipe (a partly full pipe can silently
//!   lose the tail of a record), one record (≤ 16 KiB) per splice;
//! - SPLICE_F_NONBLOCK for socket → pipe, O_NONBLOCK on the sockets for pipe → socket;
//! - a non-data record makes splice fail with EINVAL (EIO for reads): read it with
//!   `recvmsg` and its record-type cmsg, then act on it;
//! - the kernel never sends close_notify: send it ourselves before FIN;
//! - Linux < 6.14 cannot take new keys (EBUSY): a client KeyUpdate ends the connection
//!   cleanly with `keyupdate_unsupported` instead of a sticky EBADMSG later.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use rustls::kernel::KernelConnection;
use socket2::SockRef;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tracing::debug;

use super::connection::{supervise, Buffers, Established, Tally};
use super::WorkerCtx;
use crate::config::Service;
use crate::conn::close::CloseReason;
use crate::conn::tls::{record_remaining, Side, Tls, MAX_RECORD_PLAINTEXT};
use crate::io::ktls::{self, CryptoInfo, Direction, TlsVersion};
use crate::io::pipe::Pipe;
use crate::io::poll::{self, Interest};
use crate::io::{sockopt, splice};
use crate::obs;

/// TLS handshake message type of KeyUpdate (RFC 8446 §4.6.3).
const HANDSHAKE_KEY_UPDATE: u8 = 24;
/// TLS handshake message type of NewSessionTicket (RFC 8446 §4.6.1).
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
/// How many splices between record-sequence checks against the AEAD's limit.
const LIMIT_CHECK_EVERY: u32 = 1024;
/// Headroom kept below the AEAD's confidentiality limit.
const LIMIT_MARGIN: u64 = 1 << 16;

/// Reads the rest of a record the handshake left half-read, so the kernel can start at a
/// record boundary (it cannot pick up mid-record), and lets rustls decrypt it.
pub(super) async fn finish_partial_record(
    client: &TcpStream,
    tls: &mut Tls<impl Side>,
    bufs: &mut Buffers,
) -> Result<bool, CloseReason> {
    let mut peer_closed = false;
    loop {
        let need = record_remaining(&bufs.incoming);
        if need == 0 {
            return Ok(peer_closed);
        }
        let start = bufs.incoming.len();
        if start + need > bufs.incoming.capacity() {
            return Err(CloseReason::TlsError);
        }
        // Exactly the missing bytes: anything further belongs to the kernel.
        let buf = std::mem::take(&mut bufs.incoming);
        let (res, slice) = client.read(buf.slice(start..start + need)).await;
        bufs.incoming = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(CloseReason::ClientIoError),
            Ok(_) => {}
        }
        if record_remaining(&bufs.incoming) == 0 {
            let progress = tls
                .read(&mut bufs.incoming, &mut bufs.upstream, &mut bufs.out)
                .map_err(|_| CloseReason::TlsError)?;
            peer_closed |= progress.peer_closed;
        }
    }
}

/// Hands the established connection to the kernel and relays with splice until both
/// directions are done. The TLS ULP is already attached to `client`.
pub(super) async fn run<S: Side>(
    ctx: &WorkerCtx,
    svc: &Service,
    client: &TcpStream,
    backend: &TcpStream,
    established: Established<S>,
    tally: &Tally,
) -> CloseReason
where
    S::Data: AfterHandoff,
{
    let Established {
        tls,
        mut bufs,
        peer_closed,
    } = established;

    // Whatever the client sent with its last handshake flight is plaintext here already.
    if !bufs.upstream.is_empty() {
        let n = bufs.upstream.len() as u64;
        let (res, _) = backend.write_all(std::mem::take(&mut bufs.upstream)).await;
        if res.is_err() {
            return CloseReason::BackendIoError;
        }
        tally.up.set(tally.up.get() + n);
    }
    drop(bufs); // userspace buffers are not needed any more
    let installed = tls
        .into_kernel()
        .map_err(|e| e.to_string())
        .and_then(|(secrets, kernel)| install_keys(client, &kernel, &secrets).map(|()| kernel));
    match installed {
        Ok(kernel) => splice_relay(ctx, svc, client, backend, kernel, peer_closed, tally).await,
        Err(e) => {
            debug!(conn = %tally.id, error = %e, "kTLS key install failed");
            CloseReason::KtlsInstallFailed
        }
    }
}

/// Installs rustls's extracted session keys as the socket's TLS_TX and TLS_RX. The TLS ULP
/// must already be attached. Works for either side of a connection.
pub(super) fn install_keys<Data>(
    sock: &impl std::os::fd::AsRawFd,
    kernel: &KernelConnection<Data>,
    secrets: &rustls::ExtractedSecrets,
) -> Result<(), String> {
    let version =
        TlsVersion::from_rustls(kernel.protocol_version()).ok_or("unsupported TLS version")?;
    let (tx_seq, tx) = &secrets.tx;
    let (rx_seq, rx) = &secrets.rx;
    let mut tx = CryptoInfo::from_rustls(version, *tx_seq, tx).ok_or("unsupported cipher")?;
    let mut rx = CryptoInfo::from_rustls(version, *rx_seq, rx).ok_or("unsupported cipher")?;
    ktls::set_crypto(sock, Direction::Tx, &mut tx).map_err(|e| format!("TLS_TX: {e}"))?;
    ktls::set_crypto(sock, Direction::Rx, &mut rx).map_err(|e| format!("TLS_RX: {e}"))?;
    Ok(())
}

/// Relays between a kTLS socket and a plain one with splice until both directions end.
/// Generic over the rustls side so client mode can use it too.
pub(super) async fn splice_relay<Data: AfterHandoff>(
    ctx: &WorkerCtx,
    svc: &Service,
    tls_sock: &TcpStream,
    plain_sock: &TcpStream,
    kernel: KernelConnection<Data>,
    peer_closed: bool,
    tally: &Tally,
) -> CloseReason {
    let limit = match kernel.negotiated_cipher_suite() {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let Some(version) = TlsVersion::from_rustls(kernel.protocol_version()) else {
        return CloseReason::KtlsInstallFailed;
    };
    let (client_fd, backend_fd) = match splice_fds(tls_sock, plain_sock) {
        Ok(f) => f,
        Err(e) => {
            debug!(conn = %tally.id, error = %e, "cannot prepare sockets for splicing");
            return CloseReason::KtlsInstallFailed;
        }
    };
    let relay = KtlsRelay {
        ctx,
        client: client_fd,
        backend: backend_fd,
        kernel: RefCell::new(kernel),
        version,
        limit: limit.saturating_sub(LIMIT_MARGIN),
        last_activity: Cell::new(Instant::now()),
        tally,
    };
    let flows = std::pin::pin!(async {
        match tokio::try_join!(
            relay.client_to_backend(peer_closed),
            relay.backend_to_client(),
        ) {
            Ok((up_end, ())) => up_end,
            Err(reason) => reason,
        }
    });
    let reason = supervise(ctx, svc.tunables.idle_timeout, &relay.last_activity, flows).await;
    // Ends ops still in flight (they hold their own fds); a pipe one of them still holds
    // was closed rather than reused when its flow was dropped.
    let _ = SockRef::from(&*relay.client).shutdown(Shutdown::Both);
    let _ = SockRef::from(&*relay.backend).shutdown(Shutdown::Both);
    reason
}

/// The two sockets of a kTLS connection: `client` is the kTLS one, `backend` the plain one.
struct KtlsRelay<'a, Data> {
    ctx: &'a WorkerCtx,
    client: Rc<OwnedFd>,
    backend: Rc<OwnedFd>,
    kernel: RefCell<KernelConnection<Data>>,
    version: TlsVersion,
    /// Highest record sequence number allowed in either direction before rekey or close.
    limit: u64,
    last_activity: Cell<Instant>,
    tally: &'a Tally,
}

/// What a control record asks the relay to do.
enum Control {
    /// close_notify: the client sends no more.
    PeerClosed,
    /// Handled (a key update the kernel accepted); keep relaying.
    Continue,
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Post-handshake messages a kTLS connection's peer may send, by side.
pub(super) trait AfterHandoff: Sized {
    /// A TLS 1.3 NewSessionTicket (the message body): a client keeps it for resumption.
    fn new_session_ticket(
        kernel: &mut KernelConnection<Self>,
        body: &[u8],
    ) -> Result<(), rustls::Error>;
}

impl AfterHandoff for rustls::server::ServerConnectionData {
    fn new_session_ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> Result<(), rustls::Error> {
        Err(rustls::Error::General(
            "a client sent a NewSessionTicket".into(),
        ))
    }
}

impl AfterHandoff for rustls::client::ClientConnectionData {
    fn new_session_ticket(
        kernel: &mut KernelConnection<Self>,
        body: &[u8],
    ) -> Result<(), rustls::Error> {
        kernel.handle_new_session_ticket(body)
    }
}

impl<Data: AfterHandoff> KtlsRelay<'_, Data> {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Client (kTLS) → backend. Ends on close_notify or FIN from the client.
    async fn client_to_backend(&self, peer_closed: bool) -> Result<CloseReason, CloseReason> {
        if peer_closed {
            let _ = SockRef::from(&*self.backend).shutdown(Shutdown::Write);
            return Ok(CloseReason::Done);
        }
        let mut lease = PipeLease::new(self.ctx);
        let mut splices = 0u32;
        loop {
            let pipe = lease.get().map_err(|_| CloseReason::PipeUnavailable)?;
            // One record per splice, into an empty pipe (see the module notes).
            match splice::splice(&self.client, &pipe.write, MAX_RECORD_PLAINTEXT as u32).await {
                Ok(0) => {
                    let _ = SockRef::from(&*self.backend).shutdown(Shutdown::Write);
                    return Ok(CloseReason::ClientEofNoCloseNotify);
                }
                Ok(n) => {
                    self.touch();
                    drain_pipe(pipe, &self.backend, n)
                        .await
                        .map_err(|_| CloseReason::BackendIoError)?;
                    self.tally.up.set(self.tally.up.get() + n as u64);
                    obs::add(&self.ctx.stats.spliced_client_to_backend, n as u64);
                    splices += 1;
                    if splices % LIMIT_CHECK_EVERY == 0 {
                        self.check_limit(Direction::Rx)?;
                    }
                }
                Err(e) if errno(&e) == Some(libc::EAGAIN) => {
                    lease.release_drained();
                    poll::ready(&self.client, Interest::Readable)
                        .await
                        .map_err(|_| CloseReason::ClientIoError)?;
                }
                // A control record is next: splice refuses it (EINVAL), reads give EIO.
                Err(e) if matches!(errno(&e), Some(libc::EINVAL | libc::EIO)) => {
                    match self.control_record()? {
                        Control::PeerClosed => {
                            let _ = SockRef::from(&*self.backend).shutdown(Shutdown::Write);
                            return Ok(CloseReason::Done);
                        }
                        Control::Continue => {}
                    }
                }
                Err(e) if errno(&e) == Some(libc::EBADMSG) => return Err(CloseReason::TlsError),
                Err(_) => return Err(CloseReason::ClientIoError),
            }
        }
    }

    /// Backend → client (kTLS). Ends on FIN from the backend: close_notify, then FIN.
    async fn backend_to_client(&self) -> Result<(), CloseReason> {
        let mut lease = PipeLease::new(self.ctx);
        let mut splices = 0u32;
        loop {
            let pipe = lease.get().map_err(|_| CloseReason::PipeUnavailable)?;
            match splice::splice(&self.backend, &pipe.write, pipe.capacity as u32).await {
                Ok(0) => {
                    self.send_close_notify().await?;
                    let _ = SockRef::from(&*self.client).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    self.touch();
                    drain_pipe(pipe, &self.client, n)
                        .await
                        .map_err(|_| CloseReason::ClientIoError)?;
                    self.tally.down.set(self.tally.down.get() + n as u64);
                    obs::add(&self.ctx.stats.spliced_backend_to_client, n as u64);
                    splices += 1;
                    if splices % LIMIT_CHECK_EVERY == 0 {
                        self.check_limit(Direction::Tx)?;
                    }
                }
                Err(e) if errno(&e) == Some(libc::EAGAIN) => {
                    lease.release_drained();
                    poll::ready(&self.backend, Interest::Readable)
                        .await
                        .map_err(|_| CloseReason::BackendIoError)?;
                }
                Err(_) => return Err(CloseReason::BackendIoError),
            }
        }
    }

    /// Sends close_notify through the kernel, waiting for room in the socket buffer.
    async fn send_close_notify(&self) -> Result<(), CloseReason> {
        loop {
            match ktls::send_close_notify(&*self.client) {
                Ok(()) => return Ok(()),
                Err(e) if errno(&e) == Some(libc::EAGAIN) => {
                    poll::ready(&self.client, Interest::Writable)
                        .await
                        .map_err(|_| CloseReason::ClientIoError)?;
                }
                Err(_) => return Err(CloseReason::ClientIoError),
            }
        }
    }

    /// Reads the pending non-data record and decides what it means.
    fn control_record(&self) -> Result<Control, CloseReason> {
        // Control records are rare (alerts, key updates, tickets): a record-sized buffer per one.
        let mut buf = vec![0u8; MAX_RECORD_PLAINTEXT];
        let record = match ktls::recv_record(&*self.client, &mut buf) {
            Ok(Some(r)) => r,
            // Nothing queued after all: let the splice loop try again.
            Ok(None) => return Ok(Control::Continue),
            Err(e) if errno(&e) == Some(libc::EBADMSG) => return Err(CloseReason::TlsError),
            Err(_) => return Err(CloseReason::ClientIoError),
        };
        obs::inc(&self.ctx.stats.ktls_control_records);
        let payload = &buf[..record.len];
        match record.content_type {
            ktls::RECORD_ALERT => match payload {
                [_, 0] => Ok(Control::PeerClosed), // close_notify
                _ => {
                    debug!(conn = %self.tally.id, alert = ?payload, "client sent a TLS alert");
                    Err(CloseReason::TlsAlert)
                }
            },
            ktls::RECORD_HANDSHAKE => self.handshake_messages(payload),
            // The splice path handles data itself; a data record here means we raced it.
            ktls::RECORD_APPLICATION_DATA => Err(CloseReason::TlsError),
            // EOF (len 0) on the control read: the splice loop sees it next.
            _ if record.len == 0 => Ok(Control::Continue),
            _ => Err(CloseReason::TlsError),
        }
    }

    /// Handles the post-handshake messages in one record (a record may carry several, as
    /// a server's two tickets often do).
    fn handshake_messages(&self, mut rest: &[u8]) -> Result<Control, CloseReason> {
        while !rest.is_empty() {
            let (kind, len) = match rest {
                [kind, a, b, c, ..] => (*kind, usize::from_be_bytes([0, 0, 0, 0, 0, *a, *b, *c])),
                _ => return Err(CloseReason::TlsError),
            };
            let Some(body) = rest.get(4..4 + len) else {
                return Err(CloseReason::TlsError);
            };
            match (kind, body) {
                (HANDSHAKE_KEY_UPDATE, [request]) => {
                    self.key_update(*request == 1)?;
                }
                (HANDSHAKE_NEW_SESSION_TICKET, _) => {
                    let mut kernel = self.kernel.borrow_mut();
                    if let Err(e) = Data::new_session_ticket(&mut kernel, body) {
                        debug!(conn = %self.tally.id, error = %e, "unusable post-handshake ticket");
                        return Err(CloseReason::TlsError);
                    }
                }
                _ => {
                    debug!(conn = %self.tally.id, kind, len, "unexpected post-handshake message on kTLS");
                    return Err(CloseReason::TlsError);
                }
            }
            rest = &rest[4 + len..];
        }
        Ok(Control::Continue)
    }

    /// The client switched to new keys. Kernels before 6.14 refuse a second TLS_RX (EBUSY):
    /// close cleanly then, instead of failing on the next record with a sticky EBADMSG.
    fn key_update(&self, update_requested: bool) -> Result<Control, CloseReason> {
        let mut kernel = self.kernel.borrow_mut();
        let (seq, secrets) = kernel
            .update_rx_secret()
            .map_err(|_| CloseReason::TlsError)?;
        let mut rx =
            CryptoInfo::from_rustls(self.version, seq, &secrets).ok_or(CloseReason::TlsError)?;
        match ktls::set_crypto(&*self.client, Direction::Rx, &mut rx) {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EBUSY) => {
                let _ = ktls::send_close_notify(&*self.client);
                return Err(CloseReason::KeyUpdateUnsupported);
            }
            Err(_) => return Err(CloseReason::KtlsInstallFailed),
        }
        if update_requested {
            // Announce our own update under the old key, then switch TLS_TX.
            ktls::send_record(
                &*self.client,
                ktls::RECORD_HANDSHAKE,
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0],
            )
            .map_err(|_| CloseReason::ClientIoError)?;
            let (seq, secrets) = kernel
                .update_tx_secret()
                .map_err(|_| CloseReason::TlsError)?;
            let mut tx = CryptoInfo::from_rustls(self.version, seq, &secrets)
                .ok_or(CloseReason::TlsError)?;
            ktls::set_crypto(&*self.client, Direction::Tx, &mut tx)
                .map_err(|_| CloseReason::KtlsInstallFailed)?;
        }
        Ok(Control::Continue)
    }

    /// rustls no longer counts records after the hand-off: the kernel's sequence number
    /// must stay below the AEAD's limit. TLS 1.3 could rekey (Linux ≥ 6.14); we close.
    fn check_limit(&self, direction: Direction) -> Result<(), CloseReason> {
        match ktls::record_seq(&*self.client, direction) {
            Ok(seq) if seq >= self.limit => Err(CloseReason::RecordLimit),
            Ok(_) => Ok(()),
            Err(e) => {
                // Without the sequence number the limit cannot be kept: do not go on blind.
                debug!(conn = %self.tally.id, error = %e, "cannot read the kTLS record sequence number");
                Err(CloseReason::RecordLimit)
            }
        }
    }
}

/// A pipe borrowed from the worker's pool while bytes flow one way, and handed back empty
/// before the flow waits for more: an idle connection holds no pipe (and no four fds).
pub(super) struct PipeLease<'a> {
    ctx: &'a WorkerCtx,
    pipe: Option<Pipe>,
}

impl<'a> PipeLease<'a> {
    pub(super) fn new(ctx: &'a WorkerCtx) -> PipeLease<'a> {
        PipeLease { ctx, pipe: None }
    }

    /// The leased pipe, taken from the pool if none is held.
    pub(super) fn get(&mut self) -> io::Result<&Pipe> {
        if self.pipe.is_none() {
            self.pipe = Some(self.ctx.pipes.take()?);
            self.ctx
                .stats
                .pipes_idle
                .set(self.ctx.pipes.idle_count() as u64);
        }
        Ok(self.pipe.as_ref().expect("just set"))
    }

    /// Hands the pipe back; only after every splice into it was drained with [`drain_pipe`].
    pub(super) fn release_drained(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.ctx.pipes.give_back_drained(pipe);
            self.ctx
                .stats
                .pipes_idle
                .set(self.ctx.pipes.idle_count() as u64);
        }
    }
}

impl Drop for PipeLease<'_> {
    /// A flow that ended mid-way may leave bytes in its pipe or an op holding it: the pool
    /// checks both and closes such a pipe instead of reusing it.
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.ctx.pipes.give_back(pipe);
            self.ctx
                .stats
                .pipes_idle
                .set(self.ctx.pipes.idle_count() as u64);
        }
    }
}

/// Moves exactly `n` bytes out of `pipe` into `to`, waiting whenever `to` is full.
pub(super) async fn drain_pipe(pipe: &Pipe, to: &Rc<OwnedFd>, mut n: usize) -> io::Result<()> {
    while n > 0 {
        match splice::splice(&pipe.read, to, n as u32).await {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => n -= k,
            Err(e) if errno(&e) == Some(libc::EAGAIN) => {
                poll::ready(to, Interest::Writable).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Non-blocking duplicates of two sockets for the splice ops, which keep their fds alive
/// until they complete (see `io::splice`).
pub(super) fn splice_fds(a: &TcpStream, b: &TcpStream) -> io::Result<(Rc<OwnedFd>, Rc<OwnedFd>)> {
    let a = sockopt::dup_fd(a)?;
    let b = sockopt::dup_fd(b)?;
    SockRef::from(&a).set_nonblocking(true)?;
    SockRef::from(&b).set_nonblocking(true)?;
    Ok((Rc::new(a), Rc::new(b)))
}
