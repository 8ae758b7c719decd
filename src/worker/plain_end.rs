//! The relay's plaintext side: a plain TCP socket, or — for re-encryption — a TLS
//! connection to the backend that the relay reads and writes as if it were plaintext.
//!
//! A [`TlsEnd`] keeps the relay's rules for a TLS peer: the bytes rustls last saw stay in
//! `incoming` while a read is in flight (it reads into a second buffer holding a copy of
//! the unconsumed tail, as `Relay::upstream` does), and every write to the socket — data,
//! close_notify, or a reply the read path produced (a KeyUpdate answer, an alert) — goes
//! out under one lock, so records never interleave.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::conn::tls::{ClientTls, OutBuf};

/// The relay reads and writes a plain socket itself (poll, then one non-blocking syscall)
/// and awaits a TLS end's futures boxed: they are large, and the relay's future (whose size
/// every idle connection pays) would otherwise hold room for them on plain backends.
pub(super) enum PlainEnd<'a> {
    Tcp(&'a TcpStream),
    Tls(&'a TlsEnd<'a>),
}

impl PlainEnd<'_> {
    /// No more plaintext will be written: FIN (after close_notify on TLS).
    pub(super) async fn shutdown_write(&self) {
        match self {
            PlainEnd::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            PlainEnd::Tls(t) => Box::pin(t.shutdown_write()).await,
        }
    }
}

/// A finished client handshake with the backend, relayed as plaintext.
pub(super) struct TlsEnd<'a> {
    sock: &'a TcpStream,
    state: RefCell<State>,
    /// Where the next socket read lands (see the module docs).
    next: RefCell<Vec<u8>>,
    /// The flush's second buffer, swapped with `out`'s storage while a write runs.
    spare: RefCell<Vec<u8>>,
    write_lock: tokio::sync::Mutex<()>,
}

struct State {
    tls: ClientTls,
    incoming: Vec<u8>,
    out: OutBuf,
    /// The backend sent close_notify or FIN.
    ended: bool,
}

impl<'a> TlsEnd<'a> {
    /// `incoming` and `out` are the handshake's buffers (they may hold early records).
    pub(super) fn new(sock: &'a TcpStream, tls: ClientTls, incoming: Vec<u8>, out: OutBuf) -> Self {
        let cap = incoming.capacity();
        let out_cap = out.spare() + out.filled();
        TlsEnd {
            sock,
            state: RefCell::new(State {
                tls,
                incoming,
                out,
                ended: false,
            }),
            next: RefCell::new(Vec::with_capacity(cap)),
            spare: RefCell::new(vec![0; out_cap]),
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The backend socket (to wait for its readiness).
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.as_raw_fd()
    }

    /// Whether a read would return without touching the socket: the backend ended, or
    /// `incoming` holds a whole record to decrypt.
    pub(super) fn has_plaintext_ready(&self) -> bool {
        let st = self.state.borrow();
        st.ended
            || (!st.incoming.is_empty() && crate::conn::tls::record_remaining(&st.incoming) == 0)
    }

    /// Reads plaintext into `buf` from its start (like a tokio-uring read): `Ok(0)` at the
    /// end of the stream.
    pub(super) async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        loop {
            if self.state.borrow().ended {
                return (Ok(0), buf);
            }
            // Straight into the relay's buffer (the first pass decrypts what the handshake
            // left in `incoming`); a buffer smaller than the records grows once.
            if let Err(e) = self.decrypt(&mut buf) {
                return (Err(e), buf);
            }
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            if !buf.is_empty() {
                return (Ok(buf.len()), buf);
            }
            {
                let st = self.state.borrow();
                if st.ended {
                    continue;
                }
                if st.incoming.len() == st.incoming.capacity() {
                    return (Err(io::Error::other("backend record too large")), buf);
                }
            }
            let mut next = std::mem::take(&mut *self.next.borrow_mut());
            next.clear();
            next.extend_from_slice(&self.state.borrow().incoming);
            let start = next.len();
            let (res, slice) = self.sock.read(next.slice(start..)).await;
            let mut next = slice.into_inner();
            match res {
                Ok(0) => {
                    self.state.borrow_mut().ended = true;
                    *self.next.borrow_mut() = next;
                }
                Ok(_) => {
                    std::mem::swap(&mut self.state.borrow_mut().incoming, &mut next);
                    *self.next.borrow_mut() = next;
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Lets rustls process every complete record in `incoming`, appending plaintext to
    /// `plain`.
    fn decrypt(&self, plain: &mut Vec<u8>) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        let State {
            tls,
            incoming,
            out,
            ended,
        } = &mut *st;
        let progress = tls
            .read(incoming, plain, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        *ended |= progress.peer_closed;
        Ok(())
    }

    pub(super) async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let _turn = self.write_lock.lock().await;
        let encrypted = {
            let mut st = self.state.borrow_mut();
            let State {
                tls, incoming, out, ..
            } = &mut *st;
            tls.encrypt(incoming, &buf, out)
        };
        if let Err(e) = encrypted {
            return (Err(io::Error::other(e.to_string())), buf);
        }
        (self.flush_locked().await, buf)
    }

    async fn shutdown_write(&self) {
        let _turn = self.write_lock.lock().await;
        let queued = {
            let mut st = self.state.borrow_mut();
            let State {
                tls, incoming, out, ..
            } = &mut *st;
            tls.close_notify(incoming, out)
        };
        if queued.is_ok() {
            let _ = self.flush_locked().await;
        }
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// Sends whatever `out` holds (replies the read path produced).
    async fn flush(&self) -> io::Result<()> {
        if self.state.borrow().out.is_empty() {
            return Ok(());
        }
        let _turn = self.write_lock.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> io::Result<()> {
        loop {
            let (buf, filled) = {
                let mut st = self.state.borrow_mut();
                if st.out.is_empty() {
                    return Ok(());
                }
                let spare = std::mem::take(&mut *self.spare.borrow_mut());
                st.out.take(spare)
            };
            let (res, slice) = self.sock.write_all(buf.slice(..filled)).await;
            *self.spare.borrow_mut() = slice.into_inner();
            res?;
        }
    }
}
