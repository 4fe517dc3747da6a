//! Zipf-distributed ranks for bdevperf's `-F THETA`: rank 0 is the most popular, rank `k` is
//! drawn with probability proportional to `1 / (k+1)^θ`.
//!
//! The generator is Gray et al.'s ("Quickly generating billion-record synthetic databases",
//! SIGMOD 1994), the method SPDK's `spdk_zipf` and fio use: `ζ(n, θ) = Σ 1/i^θ` is summed once
//! when the job is built (O(n), no allocation), then each draw is one uniform number, a compare
//! or two and one `powf`. It holds for `0 ≤ θ < 1` (θ = 0 is uniform); the job refuses other θ.
//! Owned by one job, on its core.

/// A Zipf rank generator over `0..n` (see the module docs).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    /// `1 + 0.5^θ`: below it (scaled by ζ) the draw is rank 1.
    second: f64,
}

impl Zipf {
    /// A generator over `0..n` (`n ≥ 1`) with exponent `theta` (`0 ≤ θ < 1`); `None` for any
    /// other θ or `n == 0`.
    pub fn new(n: u64, theta: f64) -> Option<Zipf> {
        if n == 0 || !(0.0..1.0).contains(&theta) {
            return None;
        }
        let zeta = |m: u64| (1..=m).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let nf = n as f64;
        let eta = if n <= 2 {
            1.0
        } else {
            (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Some(Zipf {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            second: 1.0 + 0.5f64.powf(theta),
        })
    }

    /// The rank for a uniform 64-bit draw `x`.
    #[inline]
    pub fn rank(&self, x: u64) -> u64 {
        // 53 random bits: a uniform double in [0, 1).
        let u = (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.second && self.n >= 2.0 {
            return 1;
        }
        let r = (self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n as u64 - 1)
    }

    /// The exponent.
    pub fn theta(&self) -> f64 {
        self.theta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u64, theta: f64, draws: u64) -> Vec<u64> {
        let z = Zipf::new(n, theta).unwrap();
        let mut c = vec![0u64; n as usize];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..draws {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c[z.rank(x) as usize] += 1;
        }
        c
    }

    #[test]
    fn skewed_ranks_follow_the_power_law() {
        let (n, draws) = (1000u64, 400_000u64);
        let c = counts(n, 0.9, draws);
        // P(0) = 1/ζ(1000, 0.9) ≈ 0.0950 (ζ ≈ 10.52); P(1) = P(0)/2^0.9.
        let p0 = c[0] as f64 / draws as f64;
        assert!((p0 - 0.0950).abs() < 0.005, "P(rank 0) = {p0}");
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((ratio - 2f64.powf(0.9)).abs() < 0.15, "P(0)/P(1) = {ratio}");
        // The top 10 % of ranks take most draws; the last ranks few.
        let top: u64 = c[..100].iter().sum();
        assert!(top as f64 / draws as f64 > 0.5);
        assert!(c[900..].iter().sum::<u64>() < c[0]);
    }

    #[test]
    fn theta_zero_is_uniform_and_bounds_hold() {
        let c = counts(10, 0.0, 100_000);
        for (k, n) in c.iter().enumerate() {
            assert!((*n as i64 - 10_000).abs() < 600, "rank {k}: {n}");
        }
        assert_eq!(Zipf::new(1, 0.5).unwrap().rank(u64::MAX), 0);
        assert!(Zipf::new(5, 1.0).is_none() && Zipf::new(5, -0.1).is_none() && Zipf::new(0, 0.5).is_none());
        let z = Zipf::new(3, 0.99).unwrap();
        assert!([0, 1, u64::MAX / 2, u64::MAX].iter().all(|&x| z.rank(x) < 3));
    }
}
