//! Speed control of a sync run, pure over a microsecond clock so tests can drive it.
//!
//! Before each window the engine asks the pacer how long to wait. Max speed is a GCRA ("virtual
//! scheduling"): each window books `window KiB / max` seconds on a virtual clock that never lags
//! the real one, so the rate over any interval stays under `max` plus one window. Min speed: if
//! the gate's foreground write counter moved since the previous decision and the rate over the
//! last 1–2 s is above `min`, wait [`THROTTLE_STEP_US`] and decide again (the rate decays while
//! the engine waits, as Linux's `sync_speed` does). The engine re-reads the speed limits every
//! window, and sizes windows with [`window_sectors`].

use crate::shared::BUCKET_SHIFT;

/// Smallest window (1 MiB): one write-gate bucket.
pub(crate) const WINDOW_MIN_SECTORS: u64 = 1 << BUCKET_SHIFT;
/// Largest window (4 MiB): big enough for sequential member I/O, small enough that a write
/// held by the barrier waits a few milliseconds at most.
pub(crate) const WINDOW_MAX_SECTORS: u64 = 4 << BUCKET_SHIFT;
/// How long to wait before deciding again while foreground writes flow above the min speed.
pub(crate) const THROTTLE_STEP_US: u64 = 10_000;
/// Rate marks roll every second: the rate is averaged over the last 1–2 s.
const RATE_MARK_US: u64 = 1_000_000;

/// Window size for a max speed: a quarter second's worth, whole 1 MiB buckets, within
/// `[WINDOW_MIN_SECTORS, window_max_sectors]`; `max_kbs == 0` (no limit) gives the largest.
pub(crate) fn window_sectors(max_kbs: u64, window_max_sectors: u64) -> u64 {
    let quarter = if max_kbs == 0 {
        u64::MAX
    } else {
        (max_kbs / 4).saturating_mul(2)
    };
    let w = quarter.clamp(WINDOW_MIN_SECTORS, window_max_sectors.max(WINDOW_MIN_SECTORS));
    (w >> BUCKET_SHIFT << BUCKET_SHIFT).max(WINDOW_MIN_SECTORS)
}

/// The largest window allowed under a cap of `window_kb` (SPDK's `process_window_size_kb`; 0:
/// no cap) when the buffers allow `window_max_sectors`. [`window_sectors`] then keeps it to
/// whole buckets, at least one.
pub(crate) fn window_cap_sectors(window_kb: u64, window_max_sectors: u64) -> u64 {
    match window_kb {
        0 => window_max_sectors,
        kb => kb.saturating_mul(2).min(window_max_sectors),
    }
}

/// Speed control, pure over a microsecond clock so tests can drive it (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// GCRA virtual clock: earliest time the next window may start at the max speed.
    next_start_us: u64,
    /// Rate marks (time, sectors synced); `old` is 1–2 s behind once the run is that old.
    mark_old: (u64, u64),
    mark_new: (u64, u64),
    /// The gate's foreground write counter at the previous decision.
    last_activity: u64,
}

impl Pacer {
    pub(crate) fn new(now_us: u64, activity: u64) -> Pacer {
        Pacer {
            next_start_us: now_us,
            mark_old: (now_us, 0),
            mark_new: (now_us, 0),
            last_activity: activity,
        }
    }

    /// KiB/s synced over the last 1–2 s; `synced_sectors` counts from the run's start.
    pub(crate) fn rate_kbs(&mut self, now_us: u64, synced_sectors: u64) -> u64 {
        if now_us.saturating_sub(self.mark_new.0) >= RATE_MARK_US {
            self.mark_old = self.mark_new;
            self.mark_new = (now_us, synced_sectors);
        }
        let dt_us = now_us.saturating_sub(self.mark_old.0).max(1);
        let kib = synced_sectors.saturating_sub(self.mark_old.1) / 2;
        (kib as u128 * 1_000_000 / dt_us as u128).min(u64::MAX as u128) as u64
    }

    /// How long to wait before starting the next window (0: start now). `activity`: the gate's
    /// foreground write counter now.
    pub(crate) fn wait_us(
        &mut self,
        now_us: u64,
        synced_sectors: u64,
        activity: u64,
        min_kbs: u64,
        max_kbs: u64,
    ) -> u64 {
        if max_kbs != 0 && now_us < self.next_start_us {
            return self.next_start_us - now_us;
        }
        let writes_flowing = activity != self.last_activity;
        self.last_activity = activity;
        if writes_flowing && self.rate_kbs(now_us, synced_sectors) > min_kbs {
            return THROTTLE_STEP_US;
        }
        0
    }

    /// A window of `sectors` starts now: books its time at `max_kbs` (0: no limit).
    pub(crate) fn charge(&mut self, now_us: u64, sectors: u64, max_kbs: u64) {
        if max_kbs == 0 {
            return;
        }
        // sectors / 2 KiB at max_kbs KiB/s, in µs.
        let cost_us = (sectors as u128 * 500_000 / max_kbs as u128).min(u64::MAX as u128) as u64;
        self.next_start_us = self.next_start_us.max(now_us).saturating_add(cost_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_obeys_max_speed() {
        // Simulated clock, I/O takes no time: the worst case for the limiter.
        for max_kbs in [1_000u64, 10_000, 200_000] {
            let mut p = Pacer::new(0, 0);
            let w = window_sectors(max_kbs, WINDOW_MAX_SECTORS);
            let (mut now, mut synced) = (0u64, 0u64);
            while now < 10_000_000 {
                match p.wait_us(now, synced, 0, u64::MAX, max_kbs) {
                    0 => {
                        p.charge(now, w, max_kbs);
                        synced += w;
                    }
                    d => now += d,
                }
            }
            let kib = synced / 2;
            // Over 10 s: at most max plus one window's burst, and not much less.
            assert!(kib <= max_kbs * 10 + w / 2, "{max_kbs}: {kib}");
            assert!(kib * 100 >= max_kbs * 10 * 95, "{max_kbs}: {kib}");
        }
        // No limit: never waits.
        let mut p = Pacer::new(0, 0);
        p.charge(0, 1 << 30, 0);
        assert_eq!(p.wait_us(0, 1 << 30, 0, u64::MAX, 0), 0);
    }

    #[test]
    fn pacing_backs_off_to_min_speed_under_foreground_writes() {
        let mut p = Pacer::new(0, 0);
        // 4 MiB synced in the first 100 ms: 40 MiB/s.
        let synced = 8192;
        assert_eq!(p.wait_us(100_000, synced, 0, 1_000, 0), 0, "no writes: full speed");
        assert_eq!(
            p.wait_us(110_000, synced, 5, 1_000, 0),
            THROTTLE_STEP_US,
            "writes and above min"
        );
        assert_eq!(p.wait_us(120_000, synced, 5, 1_000, 0), 0, "no new writes since");
        assert_eq!(
            p.wait_us(130_000, synced, 9, 100_000, 0),
            0,
            "below min: writes do not matter"
        );
        // Writes keep flowing: wait until the rate over the last 1–2 s fell under min.
        let (mut now, mut act) = (140_000u64, 10u64);
        while p.wait_us(now, synced, act, 1_000, 0) != 0 {
            now += THROTTLE_STEP_US;
            act += 1;
        }
        assert!(p.rate_kbs(now, synced) <= 1_000);
        assert!(now <= 2_200_000, "the rate window is 1–2 s: {now}");
        assert!(now >= 1_000_000, "{now}");
    }

    #[test]
    fn window_size_follows_max_speed() {
        assert_eq!(window_sectors(0, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        assert_eq!(window_sectors(1_000, WINDOW_MAX_SECTORS), WINDOW_MIN_SECTORS);
        assert_eq!(window_sectors(200_000, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        assert_eq!(
            window_sectors(12_000, WINDOW_MAX_SECTORS),
            4096,
            "3 MiB/4 s rounds to whole MiB"
        );
        assert_eq!(window_sectors(200_000, 2048), 2048);
        assert_eq!(window_sectors(u64::MAX, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        // A window cap (SPDK's process_window_size_kb): whole buckets, at least one.
        assert_eq!(window_cap_sectors(0, WINDOW_MAX_SECTORS), WINDOW_MAX_SECTORS);
        let capped = |kb| window_sectors(0, window_cap_sectors(kb, WINDOW_MAX_SECTORS));
        assert_eq!(capped(1024), WINDOW_MIN_SECTORS);
        assert_eq!(capped(64), WINDOW_MIN_SECTORS);
        assert_eq!(capped(3 * 1024), 3 * WINDOW_MIN_SECTORS);
        assert_eq!(capped(1 << 40), WINDOW_MAX_SECTORS);
    }
}
