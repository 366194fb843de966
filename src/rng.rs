//! Counter-based random numbers. Every random draw of a training run (weight
//! initialisation, data order, augmentation) comes from a stream keyed by
//! (seed, purpose, counters such as epoch or step), not from a generator
//! advanced as the run goes. A checkpoint therefore stores the step and
//! nothing else of the RNG, and a resumed run draws exactly what an
//! uninterrupted one would.

/// SplitMix64 (Steele et al.): tiny, fast, and good enough for shuffling,
/// crops and initial weights.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator whose state is `state` (for streams derived another way).
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    /// The stream for `seed` and a list of keys (purpose and counters).
    pub fn keyed(seed: u64, keys: &[u64]) -> Rng {
        let mut rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        for &k in keys {
            rng.0 ^= k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            rng.next_u64();
        }
        rng
    }

    /// A key for a string (a parameter's path, say): FNV-1a.
    pub fn key_of(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Normal with standard deviation `std`, redrawn outside ±2 std (timm's `trunc_normal_`).
    pub fn truncated_normal(&mut self, std: f64) -> f64 {
        loop {
            let z = self.normal();
            if z.abs() <= 2.0 {
                return z * std;
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i + 1));
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::keyed(1, &[2, 3]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::keyed(1, &[2, 3]).next_u64(), Rng::keyed(1, &[3, 2]).next_u64());
        assert_ne!(Rng::keyed(1, &[2]).next_u64(), Rng::keyed(2, &[2]).next_u64());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::keyed(7, &[0]).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::keyed(3, &[]);
        let xs: Vec<f64> = (0..100_000).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }
}
