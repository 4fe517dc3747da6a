//! The tick source: the CPU's time-stamp counter where there is one, else a monotonic clock in
//! nanoseconds. Ticks are what busy/idle accounting, I/O latency and timed pollers count in;
//! [`ticks_per_sec`] converts them (it is what `tick_rate` reports over RPC).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Current tick count. Callable on any thread; cheap enough to call twice per I/O.
#[inline]
pub fn ticks() -> u64 {
    imp::read()
}

/// Ticks per second, measured once per process (about 10 ms at first call).
pub fn ticks_per_sec() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(imp::calibrate)
}

/// Converts a tick count into microseconds (floating point, for reports).
pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_sec() as f64
}

fn calibrate_against_clock(read: fn() -> u64) -> u64 {
    // Two 5 ms windows; the larger is the less disturbed by preemption on a shared machine.
    let mut best = 0u64;
    for _ in 0..2 {
        let t0 = Instant::now();
        let c0 = read();
        std::thread::sleep(Duration::from_millis(5));
        let c1 = read();
        let ns = t0.elapsed().as_nanos().max(1) as u64;
        let rate = ((c1 - c0) as u128 * 1_000_000_000u128 / ns as u128) as u64;
        best = best.max(rate);
    }
    best.max(1)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod imp {
    #[inline]
    pub fn read() -> u64 {
        // SAFETY: RDTSC reads a counter register; it has no memory effects and is available on
        // every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    pub fn calibrate() -> u64 {
        super::calibrate_against_clock(read)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;
    fn epoch() -> &'static Instant {
        static E: OnceLock<Instant> = OnceLock::new();
        E.get_or_init(Instant::now)
    }
    #[inline]
    pub fn read() -> u64 {
        epoch().elapsed().as_nanos() as u64
    }
    pub fn calibrate() -> u64 {
        1_000_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ticks_advance_and_rate_is_plausible() {
        let a = ticks();
        std::thread::sleep(Duration::from_millis(2));
        let b = ticks();
        assert!(b > a);
        let rate = ticks_per_sec();
        // Between 100 MHz and 10 GHz on anything we run on.
        assert!((100_000_000..10_000_000_000).contains(&rate), "rate {rate}");
        let us = ticks_to_us(b - a);
        assert!(us >= 1000.0, "2 ms sleep measured as {us} us");
    }
}
