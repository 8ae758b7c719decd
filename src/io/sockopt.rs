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

/// A second descriptor for `owner`'s socket, for ops that must keep it open on their own.
pub fn dup_fd(owner: &impl AsRawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: as in `with_sockref`: `owner` keeps the fd open for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) };
    fd.try_clone_to_owned()
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
    } else {
        // Explicitly off: a kept listener may have had it on before a reload, and accepted
        // sockets inherit the listener's setting.
        sock.set_keepalive(false)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Keepalive;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn accepted_sockets_inherit_the_listeners_tunables() {
        // tlsfront sets them once on the listener and relies on this.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let t = Tunables {
            nodelay: true,
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(61),
                interval: Duration::from_secs(11),
                count: 6,
            }),
            ..Tunables::default()
        };
        apply_stream_tunables(&SockRef::from(&listener), &t).unwrap();
        listener
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        listener.listen(8).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(accepted.keepalive().unwrap());
        assert_eq!(accepted.keepalive_time().unwrap(), Duration::from_secs(61));
        assert_eq!(
            accepted.keepalive_interval().unwrap(),
            Duration::from_secs(11)
        );
        assert_eq!(accepted.keepalive_retries().unwrap(), 6);
    }

    #[test]
    fn tunables_reach_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let tunables = Tunables {
            nodelay: true,
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                count: 4,
            }),
            rcvbuf: Some(200_000),
            sndbuf: Some(300_000),
            ..Tunables::default()
        };
        with_sockref(&stream, |s| apply_stream_tunables(&s, &tunables)).unwrap();
        let s = SockRef::from(&stream);
        assert!(s.nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.keepalive_retries().unwrap(), 4);
        // Linux doubles the requested size for bookkeeping.
        assert!(s.recv_buffer_size().unwrap() >= 200_000);
        assert!(s.send_buffer_size().unwrap() >= 300_000);

        let off = Tunables {
            nodelay: false,
            keepalive: None,
            ..Tunables::default()
        };
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        with_sockref(&other, |s| apply_stream_tunables(&s, &off)).unwrap();
        assert!(!SockRef::from(&other).nodelay().unwrap());
        assert!(!SockRef::from(&other).keepalive().unwrap());
    }
}
