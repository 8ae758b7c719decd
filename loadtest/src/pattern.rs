//! The byte stream both ends agree on: the byte at stream offset `o` is `o % 251`.
//!
//! A prime period means a stream that lost, duplicated or reordered bytes
//! almost surely fails the check, while checking stays a plain `memcmp`.

use std::sync::OnceLock;

/// Size of one application write (and read buffer).
pub const CHUNK: usize = 64 * 1024;
const PERIOD: usize = 251;

pub struct Pattern {
    buf: Vec<u8>,
}

/// The shared pattern (built once).
pub fn pattern() -> &'static Pattern {
    static P: OnceLock<Pattern> = OnceLock::new();
    P.get_or_init(|| Pattern {
        buf: (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect(),
    })
}

impl Pattern {
    /// `len` (at most [`CHUNK`]) bytes of the stream starting at `offset`.
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % PERIOD as u64) as usize;
        &self.buf[start..start + len]
    }

    /// Whether `data` is what the stream holds at `offset`.
    pub fn matches(&self, offset: u64, data: &[u8]) -> bool {
        data.chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| c == self.slice(offset + (i * CHUNK) as u64, c.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_continuous() {
        let p = pattern();
        let mut joined = p.slice(0, CHUNK).to_vec();
        joined.extend_from_slice(p.slice(CHUNK as u64, 1000));
        assert!(p.matches(0, &joined));
        assert!(!p.matches(1, &joined));
        assert_eq!(joined[CHUNK], (CHUNK % PERIOD) as u8);
    }
}
