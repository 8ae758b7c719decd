//! CPU time used by this process, for capacity figures (work per CPU-second).

use std::time::Duration;

/// User + system CPU time used so far by the whole process (all threads).
pub fn process_cpu_time() -> Duration {
    // SAFETY: `rusage` is plain old data, so all-zero is a valid value; getrusage writes only
    // into the struct we pass, which lives for the whole call. RUSAGE_SELF cannot fail.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(ru.ru_utime) + time(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::process_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(super::process_cpu_time() > before);
    }
}
