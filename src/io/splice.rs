//! io_uring SPLICE: moves bytes between a socket and a pipe inside the kernel.
//!
//! The op keeps both file descriptors (shared `Rc<OwnedFd>`s) until its completion
//! arrives, so dropping the future never lets the kernel act on a closed or reused fd.
//! Always submitted with SPLICE_F_NONBLOCK: a splice that would wait instead returns
//! EAGAIN, and the caller waits with a poll op (a blocking splice would park an io-wq
//! thread per idle connection).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use tokio_uring::UnsubmittedOneshot;

use super::Completion;

/// Never read: holding the fds until completion is the point.
struct SpliceData {
    _from: Rc<OwnedFd>,
    _to: Rc<OwnedFd>,
}

/// Splices up to `len` bytes from `from` to `to` (one of them must be a pipe).
/// Ok(0) means end of file on `from`.
pub async fn splice(from: &Rc<OwnedFd>, to: &Rc<OwnedFd>, len: u32) -> io::Result<usize> {
    let sqe = opcode::Splice::new(
        types::Fd(from.as_raw_fd()),
        -1,
        types::Fd(to.as_raw_fd()),
        -1,
        len,
    )
    .flags(libc::SPLICE_F_NONBLOCK)
    .build();
    UnsubmittedOneshot::new(
        SpliceData {
            _from: from.clone(),
            _to: to.clone(),
        },
        Completion::new(),
        sqe,
    )
    .submit()
    .await
    .map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pipe::Pipe;
    use crate::io::poll::{ready, Interest};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Socket → pipe → socket through the io_uring ops, on plain TCP (works on any kernel).
    #[test]
    fn splices_socket_to_socket_through_a_pipe() {
        tokio_uring::start(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (src, _) = listener.accept().unwrap();
            let dst_peer_listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let dst = TcpStream::connect(dst_peer_listener.local_addr().unwrap()).unwrap();
            let (mut reader, _) = dst_peer_listener.accept().unwrap();
            src.set_nonblocking(true).unwrap();
            dst.set_nonblocking(true).unwrap();
            let src: Rc<OwnedFd> = Rc::new(src.into());
            let dst: Rc<OwnedFd> = Rc::new(dst.into());
            let pipe = Pipe::new(64 * 1024).unwrap();

            // Nothing to read yet: NONBLOCK gives EAGAIN instead of parking a kernel thread.
            let empty = splice(&src, &pipe.write, 4096).await;
            assert_eq!(empty.unwrap_err().raw_os_error(), Some(libc::EAGAIN));

            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let sender = std::thread::spawn({
                let data = data.clone();
                move || {
                    writer.write_all(&data).unwrap();
                    drop(writer); // FIN
                }
            });
            let receiver = std::thread::spawn(move || {
                let mut got = Vec::new();
                reader.read_to_end(&mut got).unwrap();
                got
            });
            let mut moved = 0;
            loop {
                match splice(&src, &pipe.write, pipe.capacity as u32).await {
                    Ok(0) => break,
                    Ok(mut n) => {
                        moved += n;
                        while n > 0 {
                            match splice(&pipe.read, &dst, n as u32).await {
                                Ok(k) => n -= k,
                                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                                    ready(&dst, Interest::Writable).await.unwrap();
                                }
                                Err(e) => panic!("pipe -> socket: {e}"),
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        ready(&src, Interest::Readable).await.unwrap();
                    }
                    Err(e) => panic!("socket -> pipe: {e}"),
                }
            }
            sender.join().unwrap();
            assert_eq!(moved, data.len());
            assert_eq!(pipe.queued().unwrap(), 0);
            rustix::net::shutdown(&*dst, rustix::net::Shutdown::Write).unwrap();
            assert_eq!(receiver.join().unwrap(), data);
        });
    }
}
