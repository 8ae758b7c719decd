//! Non-blocking socket reads and writes issued directly (MSG_DONTWAIT), for the relay's
//! readiness model: it waits with an io_uring poll (no buffer held while a connection is
//! idle), then moves the bytes with one plain syscall into a pooled buffer.

use std::io;
use std::os::fd::AsRawFd;

/// Receives at most `max` bytes into `buf`'s spare capacity, after the bytes it holds:
/// `Ok(0)` is the end of the stream, `WouldBlock` means nothing is there (yet). `buf` must
/// have spare capacity.
pub fn recv_append(sock: &impl AsRawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = max.min(spare.len());
    let spare = &mut spare[..room];
    if spare.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no room to receive into",
        ));
    }
    // SAFETY: the kernel writes at most `spare.len()` bytes at `spare`'s start, memory `buf`
    // owns and nothing else references during the call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: recv initialised the first `n` (≤ spare capacity) bytes after `len`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Sends as much of `data` as the socket takes now (`WouldBlock` if none). No SIGPIPE.
pub fn send(sock: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid, initialised slice for the duration of the call.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_after_held_bytes_and_reports_empty_and_closed_sockets() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut buf = Vec::with_capacity(8);
        buf.extend_from_slice(b"ab");
        let all = usize::MAX;
        let err = recv_append(&b, &mut buf, all).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        a.write_all(b"cdefghijk").unwrap();
        assert_eq!(recv_append(&b, &mut buf, 2).unwrap(), 2, "at most max");
        assert_eq!(
            recv_append(&b, &mut buf, all).unwrap(),
            4,
            "only the spare capacity"
        );
        assert_eq!(buf, b"abcdefgh");
        assert_eq!(
            recv_append(&b, &mut buf, all).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let mut rest = Vec::with_capacity(8);
        assert_eq!(recv_append(&b, &mut rest, all).unwrap(), 3);
        drop(a);
        assert_eq!(recv_append(&b, &mut rest, all).unwrap(), 0);
    }

    #[test]
    fn sends_what_fits_then_would_block_and_fails_on_a_closed_peer() {
        let (a, b) = UnixStream::pair().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0;
        loop {
            match send(&a, &chunk) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::WouldBlock);
                    break;
                }
            }
        }
        assert!(total > 0);
        drop(b);
        assert_eq!(send(&a, b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
