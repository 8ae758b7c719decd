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
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// Never read: holding the fds until completion is the point.
struct SpliceData {
    _from: Rc<OwnedFd>,
    _to: Rc<OwnedFd>,
}

struct SpliceDone;

impl OneshotOutputTransform for SpliceDone {
    type Output = io::Result<usize>;
    type StoredData = SpliceData;

    fn transform_oneshot_output(
        self,
        data: SpliceData,
        cqe: io_uring::cqueue::Entry,
    ) -> io::Result<usize> {
        drop(data);
        match cqe.result() {
            r if r >= 0 => Ok(r as usize),
            r => Err(io::Error::from_raw_os_error(-r)),
        }
    }
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
        SpliceDone,
        sqe,
    )
    .submit()
    .await
}
