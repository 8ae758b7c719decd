//! A worker's idle I/O buffers for one service: the relay borrows one only while bytes move
//! through it, so an idle connection holds none (issue 9: memory per idle connection).
//! Worker-local (no lock); every buffer has the same size, large enough for a whole TLS
//! record plus the service's `buffer_size`, so one pool serves reads and TLS output alike.

use std::cell::RefCell;

use crate::conn::tls::{out_capacity, OutBuf, MAX_RECORD_WIRE};

/// Bytes of idle buffers kept per kind (at least [`MIN_IDLE`] buffers); beyond that,
/// returned buffers are freed. A relay step borrows and returns within one turn, so a few
/// idle buffers serve many busy connections.
const MAX_IDLE_BYTES: usize = 1 << 20;
const MIN_IDLE: usize = 4;

pub(super) struct BufPool {
    size: usize,
    /// The most plaintext one step reads (`buffer_size`): its records, with their overhead
    /// and room for control records, fit one output buffer.
    plain_step: usize,
    max_idle: usize,
    /// Empty (`len == 0`) buffers for reads and plaintext.
    plain: RefCell<Vec<Vec<u8>>>,
    /// Initialised (`len == size`) storage for [`OutBuf`]s.
    out: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub(super) fn new(buffer_size: usize) -> Self {
        let size = out_capacity(buffer_size.max(MAX_RECORD_WIRE));
        BufPool {
            size,
            plain_step: buffer_size,
            max_idle: (MAX_IDLE_BYTES / size).max(MIN_IDLE),
            plain: RefCell::new(Vec::new()),
            out: RefCell::new(Vec::new()),
        }
    }

    /// An empty buffer with room for a whole record (and the service's `buffer_size`).
    pub(super) fn take(&self) -> Vec<u8> {
        self.plain
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Takes back a buffer from [`BufPool::take`] (others are simply freed).
    pub(super) fn give(&self, mut buf: Vec<u8>) {
        let mut plain = self.plain.borrow_mut();
        if buf.capacity() == self.size && plain.len() < self.max_idle {
            buf.clear();
            plain.push(buf);
        }
    }

    /// The most plaintext to read in one step, so its encryption fits an output buffer
    /// without growing it.
    pub(super) fn plain_step(&self) -> usize {
        self.plain_step
    }

    /// Gives `out` storage if it has none.
    pub(super) fn fill_out(&self, out: &mut OutBuf) {
        if out.storage() == 0 {
            let storage = self
                .out
                .borrow_mut()
                .pop()
                .unwrap_or_else(|| vec![0; self.size]);
            out.restore(storage);
        }
    }

    /// Takes back an empty `out`'s storage.
    pub(super) fn drain_out(&self, out: &mut OutBuf) {
        if !out.is_empty() || out.storage() == 0 {
            return;
        }
        let (storage, _) = out.take(Vec::new());
        let mut idle = self.out.borrow_mut();
        if storage.len() == self.size && idle.len() < self.max_idle {
            idle.push(storage);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.plain.borrow().len() + self.out.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_foreign_ones_freed() {
        let pool = BufPool::new(4096);
        let mut a = pool.take();
        assert!(a.capacity() >= MAX_RECORD_WIRE);
        a.extend_from_slice(b"data");
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert!(b.is_empty(), "handed out empty");
        assert_eq!(b.as_ptr(), ptr, "the same storage again");
        pool.give(Vec::with_capacity(10));
        assert_eq!(pool.idle(), 0, "a buffer of another size is not kept");

        let mut out = OutBuf::with_capacity(0);
        out.take(Vec::new());
        pool.fill_out(&mut out);
        assert_eq!(out.storage(), b.capacity());
        pool.drain_out(&mut out);
        assert_eq!((out.storage(), pool.idle()), (0, 1));
    }

    #[test]
    fn a_plain_step_encrypts_into_one_output_buffer() {
        for buffer_size in [1024, 16 * 1024, 64 * 1024, 1 << 20] {
            let pool = BufPool::new(buffer_size);
            assert!(
                out_capacity(pool.plain_step()) <= pool.size,
                "{buffer_size}"
            );
        }
    }

    #[test]
    fn idle_buffers_are_bounded_in_bytes() {
        for buffer_size in [1024, 64 * 1024, 1 << 20] {
            let pool = BufPool::new(buffer_size);
            let held: Vec<_> = (0..100).map(|_| pool.take()).collect();
            for b in held {
                pool.give(b);
            }
            let kept = pool.idle();
            assert!(kept >= MIN_IDLE, "{buffer_size}: {kept}");
            assert!(
                kept * pool.size <= MAX_IDLE_BYTES || kept == MIN_IDLE,
                "{buffer_size}: {kept} × {}",
                pool.size
            );
        }
    }
}
