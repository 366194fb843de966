//! The generated datasets' random draws: the crate's SplitMix64
//! ([`crate::rng`]), with per-item streams and the draws captions need.
//!
//! Our own rather than a crate's so that generated datasets stay byte-identical
//! for a seed whatever crate versions the lock file picks. The streams and
//! draws here are part of the data: changing them changes every dataset.

#[derive(Debug, Clone)]
pub(super) struct Rng(crate::rng::Rng);

impl Rng {
    #[cfg(test)]
    pub(super) fn new(seed: u64) -> Self {
        Rng(crate::rng::Rng::from_state(seed))
    }

    /// An independent stream for item `index` of the stream family `seed`.
    pub(super) fn for_item(seed: u64, stream: u64, index: u64) -> Self {
        let s = crate::rng::Rng::from_state(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)).next_u64();
        Rng(crate::rng::Rng::from_state(s ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB)))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0). The modulo bias is irrelevant at our sizes.
    pub(super) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub(super) fn chance(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// A uniformly chosen element, or `None` when empty.
    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() { None } else { Some(items[self.below(items.len())]) }
    }

    /// Fisher–Yates shuffle.
    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// The draws are part of every generated dataset: pinned (values from an
    /// independent Python SplitMix64), so that a
    /// change to them (or to `crate::rng` beneath) is seen, not shipped.
    #[test]
    fn draws_are_pinned() {
        let mut r = Rng::for_item(0, 1, 2);
        assert_eq!([r.next_u64(), r.next_u64()], [0x1b21_5c83_fee0_d808, 0xaf56_ec62_e85f_2b95]);
    }

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_item(7, 1, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::for_item(7, 1, 3).next_u64(), Rng::for_item(7, 1, 4).next_u64());
        assert_ne!(Rng::for_item(7, 1, 3).next_u64(), Rng::for_item(8, 1, 3).next_u64());
        assert_ne!(Rng::for_item(7, 1, 3).next_u64(), Rng::for_item(7, 2, 3).next_u64());
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.unit() < 1.0 && r.below(5) < 5));
    }
}
