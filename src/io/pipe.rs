//! Pipes for splicing, sized with F_SETPIPE_SZ and reused from a per-worker pool.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};

/// A pipe's two ends. Both are non-blocking and close-on-exec.
pub struct Pipe {
    pub read: Rc<OwnedFd>,
    pub write: Rc<OwnedFd>,
    /// Capacity in bytes as the kernel set it (a power of two).
    pub capacity: usize,
}

impl Pipe {
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = fcntl_setpipe_size(&write, size)?;
        Ok(Pipe {
            read: Rc::new(read),
            write: Rc::new(write),
            capacity,
        })
    }

    /// Bytes waiting in the pipe.
    pub fn queued(&self) -> io::Result<usize> {
        Ok(rustix::io::ioctl_fionread(&*self.read)? as usize)
    }
}

/// A worker's spare pipes: reused so a connection costs no pipe2/fcntl syscalls.
pub struct PipePool {
    size: usize,
    max_idle: usize,
    idle: RefCell<Vec<Pipe>>,
}

impl PipePool {
    pub fn new(size: usize, max_idle: usize) -> PipePool {
        PipePool {
            size,
            max_idle,
            idle: RefCell::new(Vec::new()),
        }
    }

    pub fn take(&self) -> io::Result<Pipe> {
        match self.idle.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.size),
        }
    }

    /// Returns a pipe for reuse if it is empty and no op still holds its ends; otherwise it
    /// is closed (a pipe with bytes left would hand them to the next connection).
    pub fn give_back(&self, pipe: Pipe) {
        let reusable = Rc::strong_count(&pipe.read) == 1
            && Rc::strong_count(&pipe.write) == 1
            && pipe.queued().is_ok_and(|n| n == 0);
        let mut idle = self.idle.borrow_mut();
        if reusable && idle.len() < self.max_idle {
            idle.push(pipe);
        }
    }

    /// Returns a pipe whose every splice in has been spliced out again (empty by
    /// construction: nothing else holds its write end), without asking the kernel.
    pub fn give_back_drained(&self, pipe: Pipe) {
        debug_assert_eq!(
            pipe.queued().ok(),
            Some(0),
            "a drained pipe has bytes in it"
        );
        let mut idle = self.idle.borrow_mut();
        if Rc::strong_count(&pipe.read) == 1
            && Rc::strong_count(&pipe.write) == 1
            && idle.len() < self.max_idle
        {
            idle.push(pipe);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_sized_and_reused_only_when_empty() {
        let pool = PipePool::new(256 * 1024, 2);
        let p = pool.take().unwrap();
        assert!(p.capacity >= 256 * 1024, "{}", p.capacity);
        assert_eq!(p.queued().unwrap(), 0);
        pool.give_back(p);
        assert_eq!(pool.idle_count(), 1);

        let p = pool.take().unwrap();
        assert_eq!(pool.idle_count(), 0);
        rustix::io::write(&*p.write, b"left over").unwrap();
        assert_eq!(p.queued().unwrap(), 9);
        pool.give_back(p);
        assert_eq!(
            pool.idle_count(),
            0,
            "a pipe with bytes in it must not be reused"
        );

        let held = pool.take().unwrap();
        let extra_ref = held.read.clone();
        pool.give_back(held);
        assert_eq!(
            pool.idle_count(),
            0,
            "a pipe an op still holds must not be reused"
        );
        drop(extra_ref);
    }
}
