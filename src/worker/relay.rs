//! The userspace relay of an established connection: TLS peer ⇄ plaintext side.
//!
//! Readiness model, so an idle connection holds no I/O buffer: each direction waits with an
//! io_uring poll (no buffer, no extra fd), then borrows a buffer
//! from the worker's [`BufPool`], moves the bytes with one non-blocking syscall
//! ([`crate::io::nb`]), and gives the buffer back once they are passed on. Only a partial
//! TLS record, or bytes a full socket has not taken yet, keep a buffer across a wait.
//!
//! Two futures on the worker's thread:
//! - `upstream`: peer socket → [`Tls::read`] → plaintext side;
//! - `downstream`: plaintext side → [`Tls::encrypt`] → the shared [`OutBuf`] → peer socket;
//! - `writer`: sends what the read path queued (alerts, KeyUpdate answers), so `upstream`
//!   never waits for the peer to read — two proxies in a row would otherwise wait for each
//!   other.
//!
//! Every record for the peer goes through the one `OutBuf`, and one flush at a time sends
//! it, in order: a flow that finds another one flushing waits for it, which sends its bytes
//! too.
//!
//! Backpressure: a side is read again only after what was read before was passed on
//! (written to the plaintext side, or taken by the peer's socket). Half-close: close_notify
//! or FIN from the peer → shutdown(WR) on the plaintext side while the other direction goes
//! on; FIN from the plaintext side → close_notify, then FIN to the peer.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_uring::net::TcpStream;
use tracing::debug;

use super::bufpool::BufPool;
use super::connection::{supervise, Buffers, Established, Tally};
use super::plain_end::PlainEnd;
use super::{ServiceRt, WorkerCtx};
use crate::conn::close::CloseReason;
use crate::conn::tls::{OutBuf, Side, Tls, TlsError};
use crate::io::poll::{self, Interest};
use crate::io::{nb, sockopt};

/// State both flows touch (one thread; no borrow is held across an await).
struct Shared<S: Side> {
    tls: Box<Tls<S>>,
    /// Peer bytes rustls has not consumed yet: empty without storage while idle, a pooled
    /// buffer while a record is incomplete. Kept here so the write path shows rustls the
    /// same bytes (see `conn::tls` invariants).
    incoming: Vec<u8>,
    out: OutBuf,
}

struct Relay<'a, S: Side> {
    /// The peer socket (the caller keeps it open, and shuts it down after the relay so a
    /// poll still in flight ends).
    peer: RawFd,
    plain: PlainEnd<'a>,
    pool: &'a BufPool,
    shared: RefCell<Shared<S>>,
    /// A flow is sending `out` to the peer.
    flushing: Cell<bool>,
    /// The peer's socket failed while a flush ran (reported to flows that waited for it).
    peer_failed: Cell<bool>,
    flushed: Notify,
    /// `upstream` queued records for the peer.
    wake_writer: Notify,
    last_activity: Cell<Instant>,
    tally: &'a Tally,
}

/// Relays between the TLS peer on `peer` and the plaintext side `plain` (in client mode the
/// TLS peer is the remote server and the plaintext side the local client; the caller reads
/// the reasons accordingly).
///
/// A plain fn that sets the relay up and returns the future that runs it: the future then
/// holds the `Relay` once, not also the `Established` it was made from (an async fn keeps
/// its arguments for its whole life — in every idle connection's task).
pub(super) fn relay<'a, S: Side + 'a>(
    ctx: &'a WorkerCtx,
    rt: &'a ServiceRt,
    peer: &TcpStream,
    plain: PlainEnd<'a>,
    established: Established<S>,
    tally: &'a Tally,
) -> impl std::future::Future<Output = CloseReason> + 'a {
    let Established {
        tls,
        bufs,
        peer_closed,
    } = established;
    let pool = &rt.buffers;
    let peer_fd = peer.as_raw_fd();
    // The opening's buffers are freed; only unconsumed bytes (a partial record) and unsent
    // ones are kept until they are dealt with.
    let Buffers {
        mut incoming,
        upstream: early_plain,
        mut out,
        out_spare,
    } = bufs;
    // (Moved out whole: a partly moved `bufs` would keep `out_spare` for the relay's life.)
    drop(out_spare);
    if incoming.is_empty() {
        incoming = Vec::new();
    }
    if out.is_empty() {
        out.take(Vec::new());
    }
    let relay = Relay {
        peer: peer_fd,
        plain,
        pool,
        shared: RefCell::new(Shared { tls, incoming, out }),
        flushing: Cell::new(false),
        peer_failed: Cell::new(false),
        flushed: Notify::new(),
        wake_writer: Notify::new(),
        last_activity: Cell::new(Instant::now()),
        tally,
    };
    async move {
        let relay = &relay;
        let flows = std::pin::pin!(async {
            let both = async {
                match tokio::try_join!(relay.upstream(early_plain, peer_closed), relay.downstream())
                {
                    Ok((up_end, ())) => up_end,
                    Err(reason) => reason,
                }
            };
            tokio::select! {
                reason = both => reason,
                reason = relay.writer() => reason,
            }
        });
        // Buffers a flow still holds at the end (a partial record, unsent bytes) are freed
        // with `relay`; the pool only takes back what a flow returned.
        let idle = rt.svc().tunables.idle_timeout;
        supervise(ctx, idle, &relay.last_activity, flows).await
    }
}

impl<S: Side> Relay<'_, S> {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Peer → plaintext side. Ends when the peer closes its sending side.
    async fn upstream(
        &self,
        mut plain: Vec<u8>,
        mut peer_closed: bool,
    ) -> Result<CloseReason, CloseReason> {
        loop {
            if !plain.is_empty() {
                let n = plain.len() as u64;
                let (res, buf) = self.write_plain(plain).await;
                self.pool.give(buf);
                res?;
                self.tally.up.set(self.tally.up.get() + n);
                self.touch();
            }
            if peer_closed {
                self.plain.shutdown_write().await;
                return Ok(CloseReason::Done);
            }
            // `Tls::read` consumed every whole record (the handshake's last call too): what
            // `incoming` still holds — a partial record, or records rustls keeps while it
            // reassembles a handshake message split across them — needs more bytes, whatever
            // its first header says. (Not reading here would spin the worker.)
            match self.receive_peer().await? {
                0 => {
                    self.plain.shutdown_write().await;
                    return Ok(CloseReason::ClientEofNoCloseNotify);
                }
                _ => self.touch(),
            }
            plain = self.pool.take();
            let (progress, has_output) = {
                let mut shared = self.shared.borrow_mut();
                let Shared { tls, out, incoming } = &mut *shared;
                self.pool.fill_out(out);
                let r = tls.read(incoming, &mut plain, out);
                if incoming.is_empty() {
                    self.pool.give(std::mem::take(incoming));
                }
                (r, !out.is_empty())
            };
            if plain.is_empty() {
                self.pool.give(std::mem::take(&mut plain));
            }
            match progress {
                Err(TlsError::Protocol(e)) => {
                    debug!(conn = %self.tally.id, error = %e, "TLS error from peer");
                    // Best effort: the alert rustls queued, then the connection ends.
                    let _ = self.flush_peer().await;
                    return Err(CloseReason::TlsError);
                }
                Err(e @ TlsError::NotWritable(_)) => {
                    debug!(conn = %self.tally.id, error = %e, "TLS read failed");
                    return Err(CloseReason::TlsError);
                }
                Ok(p) => peer_closed = p.peer_closed,
            }
            if has_output {
                self.wake_writer.notify_one();
            } else {
                self.pool.drain_out(&mut self.shared.borrow_mut().out);
            }
        }
    }

    /// Sends what `upstream` queues; only ever ends with the peer socket's failure.
    async fn writer(&self) -> CloseReason {
        loop {
            self.wake_writer.notified().await;
            if let Err(reason) = self.flush_peer().await {
                return reason;
            }
        }
    }

    /// Waits for the peer's bytes and appends what is there to `incoming` (borrowing a
    /// pooled buffer if it has none). `Ok(0)` at the end of the stream.
    async fn receive_peer(&self) -> Result<usize, CloseReason> {
        loop {
            poll::ready_raw(self.peer, Interest::Readable)
                .await
                .map_err(|_| CloseReason::ClientIoError)?;
            let mut shared = self.shared.borrow_mut();
            let incoming = &mut shared.incoming;
            if incoming.capacity() == 0 {
                *incoming = self.pool.take();
            }
            if incoming.len() == incoming.capacity() {
                debug!(
                    conn = %self.tally.id,
                    buffered = incoming.len(),
                    "peer record does not fit the buffer"
                );
                return Err(CloseReason::TlsError);
            }
            match nb::recv_append(&self.peer, incoming, usize::MAX) {
                Ok(n) => return Ok(n),
                Err(e) if retry(&e) => {
                    if incoming.is_empty() {
                        self.pool.give(std::mem::take(incoming));
                    }
                }
                Err(_) => return Err(CloseReason::ClientIoError),
            }
        }
    }

    /// Plaintext side → peer. Ends when the plaintext side sends FIN.
    async fn downstream(&self) -> Result<(), CloseReason> {
        loop {
            let plain = self.read_plain().await?;
            let n = plain.len();
            let encrypted = {
                let mut shared = self.shared.borrow_mut();
                let Shared { tls, out, incoming } = &mut *shared;
                self.pool.fill_out(out);
                if n == 0 {
                    tls.close_notify(incoming, out)
                } else {
                    tls.encrypt(incoming, &plain, out)
                }
            };
            self.pool.give(plain);
            encrypted.map_err(|e| {
                debug!(conn = %self.tally.id, error = %e, "cannot encrypt for the peer");
                CloseReason::TlsError
            })?;
            if n == 0 {
                self.flush_peer().await?;
                sockopt::with_sockref(&self.peer, |s| s.shutdown(Shutdown::Write)).ok();
                return Ok(());
            }
            self.touch();
            self.tally.down.set(self.tally.down.get() + n as u64);
            // Backpressure: the next read waits until the peer's socket took these bytes.
            self.flush_peer().await?;
        }
    }

    /// Reads what the plaintext side has into a pooled buffer (empty at the end of the
    /// stream).
    async fn read_plain(&self) -> Result<Vec<u8>, CloseReason> {
        let fd = match &self.plain {
            PlainEnd::Tcp(s) => s.as_raw_fd(),
            PlainEnd::Tls(end) => {
                // A TLS backend: wait for its socket first unless plaintext is already
                // decrypted, so an idle re-encrypting connection holds no pooled buffer
                // either. (Boxed, as every TLS-end future: see `plain_end`.)
                if !end.has_plaintext_ready() {
                    poll::ready_raw(end.raw_fd(), Interest::Readable)
                        .await
                        .map_err(|_| CloseReason::BackendIoError)?;
                }
                let (res, buf) = Box::pin(end.read(self.pool.take())).await;
                return match res {
                    Ok(_) => Ok(buf),
                    Err(_) => {
                        self.pool.give(buf);
                        Err(CloseReason::BackendIoError)
                    }
                };
            }
        };
        loop {
            poll::ready_raw(fd, Interest::Readable)
                .await
                .map_err(|_| CloseReason::BackendIoError)?;
            let mut buf = self.pool.take();
            match nb::recv_append(&fd, &mut buf, self.pool.plain_step()) {
                Ok(_) => return Ok(buf),
                Err(e) if retry(&e) => self.pool.give(buf),
                Err(_) => {
                    self.pool.give(buf);
                    return Err(CloseReason::BackendIoError);
                }
            }
        }
    }

    /// Writes all of `buf` to the plaintext side; the buffer comes back for the pool.
    async fn write_plain(&self, buf: Vec<u8>) -> (Result<(), CloseReason>, Vec<u8>) {
        let fd = match &self.plain {
            PlainEnd::Tcp(s) => s.as_raw_fd(),
            PlainEnd::Tls(end) => {
                let (res, buf) = Box::pin(end.write_all(buf)).await;
                return (res.map_err(|_| CloseReason::BackendIoError), buf);
            }
        };
        let mut sent = 0;
        while sent < buf.len() {
            match nb::send(&fd, &buf[sent..]) {
                Ok(n) => sent += n,
                Err(e) if retry(&e) => {
                    if poll::ready_raw(fd, Interest::Writable).await.is_err() {
                        return (Err(CloseReason::BackendIoError), buf);
                    }
                }
                Err(_) => return (Err(CloseReason::BackendIoError), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends everything `out` holds to the peer, in order, then returns its storage to the
    /// pool. If another flow is already flushing, waits for it: it sends these bytes too.
    async fn flush_peer(&self) -> Result<(), CloseReason> {
        if self.flushing.get() {
            while self.flushing.get() {
                self.flushed.notified().await;
            }
            return match self.peer_failed.get() {
                true => Err(CloseReason::ClientIoError),
                false => Ok(()),
            };
        }
        self.flushing.set(true);
        let r = self.send_out().await;
        self.flushing.set(false);
        self.peer_failed.set(r.is_err());
        self.flushed.notify_waiters();
        r
    }

    async fn send_out(&self) -> Result<(), CloseReason> {
        loop {
            let sent = {
                let mut shared = self.shared.borrow_mut();
                if shared.out.is_empty() {
                    self.pool.drain_out(&mut shared.out);
                    return Ok(());
                }
                nb::send(&self.peer, shared.out.as_slice())
            };
            match sent {
                Ok(n) => {
                    self.shared.borrow_mut().out.consume(n);
                    self.touch();
                }
                Err(e) if retry(&e) => {
                    poll::ready_raw(self.peer, Interest::Writable)
                        .await
                        .map_err(|_| CloseReason::ClientIoError)?;
                }
                Err(_) => return Err(CloseReason::ClientIoError),
            }
        }
    }
}

/// The socket had nothing (or no room) after all, or a signal interrupted the call.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
