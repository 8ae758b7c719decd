//! Socket options for sockets owned by tokio-uring types (which expose only a raw fd).

use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{SockRef, TcpKeepalive};

use crate::config::Tunables;

/// Runs `f` with a [`SockRef`] view of `owner`'s socket.
pub fn with_sockref<R>(owner: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: `owner` owns the descriptor and is borrowed for the whole call, so the fd stays
    // open and is not reused while the BorrowedFd (and the SockRef built from it) exists.
    let fd = unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) };
    f(SockRef::from(&fd))
}

/// Applies a service's per-connection socket tunables (both client and backend sides).
pub fn apply_stream_tunables(sock: &SockRef<'_>, t: &Tunables) -> std::io::Result<()> {
    sock.set_nodelay(t.nodelay)?;
    if let Some(ka) = t.keepalive {
        let params = TcpKeepalive::new()
            .with_time(ka.idle)
            .with_interval(ka.interval)
            .with_retries(ka.count);
        sock.set_tcp_keepalive(&params)?;
        sock.set_keepalive(true)?;
    }
    apply_buffer_sizes(sock, t)
}

/// `rcvbuf` / `sndbuf`: set on listeners and on backend sockets before connect, so the TCP
/// window scale is negotiated for them.
pub fn apply_buffer_sizes(sock: &SockRef<'_>, t: &Tunables) -> std::io::Result<()> {
    if let Some(n) = t.rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = t.sndbuf {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}
