//! The one seeded random-number generator of the test crate (the chaos
//! suite, the fault proxy, the linearizability checker's tests and
//! fingerprints), so that one seed replays a whole run.
//!
//! It is SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit counter stepped
//! by the golden-ratio constant, passed through a mixing function. Every
//! state is valid (zero included), the period is 2^64, and its output passes
//! BigCrush, which is more than a test schedule needs.
//!
//! A run draws from **forks**, not from one shared stream: [`Rng::fork`]
//! derives a child from the parent's state and a label without advancing
//! the parent, so the nemesis, each workload, the worker processes, the
//! proxy's links and the clock rates each get a stream of their own. Adding
//! a consumer, or one consumer drawing more, leaves every other stream as
//! it was, so a seed keeps replaying the same schedule as the suite grows.

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijection that mixes every input bit,
/// so nearby inputs give unrelated outputs. Also a cheap hash for a `u64`.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seeded generator; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`; the same seed gives the same stream.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A number in `0..n`. `below(0)` is 0, as `below(1)` is: "pick one of
    /// nothing" has no good answer, and a test schedule should not panic
    /// over it; callers that can see an empty set check it themselves (as
    /// [`Rng::pick`] does). The modulo bias (at most n / 2^64) is
    /// irrelevant at the sizes a test uses.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index in `0..len` (0 when `len` is 0; see [`Rng::below`]).
    pub fn index(&mut self, len: usize) -> usize {
        // `below` returns less than `len`, so it fits in a usize.
        self.below(len as u64) as usize
    }

    /// True with probability `p` (never for `p <= 0` or NaN, always for
    /// `p >= 1`).
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
        unit < p
    }

    /// One element of `items`, or `None` if it is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.index(items.len()))
    }

    /// A duration in `low..=high`, at millisecond grain (`low` if
    /// `high < low`).
    pub fn between(
        &mut self,
        low: std::time::Duration,
        high: std::time::Duration,
    ) -> std::time::Duration {
        let span_ms = u64::try_from(high.saturating_sub(low).as_millis()).unwrap_or(u64::MAX - 1);
        low + std::time::Duration::from_millis(self.below(span_ms + 1))
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }

    /// A child generator for `label`, derived from this one's state without
    /// advancing it: the same parent and label give the same child, and
    /// different labels give unrelated children.
    pub fn fork(&self, label: &str) -> Rng {
        // FNV-1a of the label, then mixed with the parent's state.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in label.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng::new(mix64(self.state ^ mix64(hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(rng: &mut Rng, n: usize) -> Vec<u64> {
        (0..n).map(|_| rng.next_u64()).collect()
    }

    #[test]
    fn a_seed_replays_its_stream_and_another_seed_does_not() {
        let first = draws(&mut Rng::new(42), 100);
        assert_eq!(first, draws(&mut Rng::new(42), 100));
        let other = draws(&mut Rng::new(43), 100);
        assert!(
            first.iter().zip(&other).all(|(a, b)| a != b),
            "seeds 42 and 43 share a draw"
        );
        // Seed 0 is a valid state, not a stuck one.
        let zero = draws(&mut Rng::new(0), 100);
        assert!(zero.iter().collect::<std::collections::BTreeSet<_>>().len() == 100);
    }

    #[test]
    fn forks_are_deterministic_independent_and_leave_the_parent_alone() {
        let parent = Rng::new(7);
        let before = parent.clone();
        let a = draws(&mut parent.fork("nemesis"), 50);
        assert_eq!(parent, before, "forking advanced the parent");
        assert_eq!(
            a,
            draws(&mut parent.fork("nemesis"), 50),
            "a fork is not deterministic"
        );
        let b = draws(&mut parent.fork("workload/registers/0"), 50);
        let c = draws(&mut parent.fork("workload/registers/1"), 50);
        for (x, y) in [(&a, &b), (&b, &c), (&a, &c)] {
            assert!(
                x.iter().zip(y).all(|(p, q)| p != q),
                "two forks share a draw"
            );
        }
        // Nor does a fork repeat its parent's own stream.
        let own = draws(&mut parent.clone(), 50);
        assert!(own.iter().zip(&a).all(|(p, q)| p != q));
        // The same label under another parent is another stream.
        assert_ne!(a, draws(&mut Rng::new(8).fork("nemesis"), 50));
    }

    #[test]
    fn below_stays_in_range_covers_it_and_never_panics() {
        let mut rng = Rng::new(1);
        assert!((0..1_000).all(|_| rng.below(1) == 0));
        assert!(
            (0..1_000).all(|_| rng.below(0) == 0),
            "below(0) is documented as 0"
        );
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            let n = rng.below(7);
            assert!(n < 7);
            seen[n as usize] += 1;
        }
        assert!(
            seen.iter().all(|&count| count > 700),
            "not roughly uniform: {seen:?}"
        );
        assert!(rng.below(u64::MAX) < u64::MAX);
        assert_eq!(rng.index(0), 0);
    }

    #[test]
    fn chance_pick_between_and_shuffle_do_what_they_say() {
        let mut rng = Rng::new(2);
        let hits = (0..10_000).filter(|_| rng.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
        assert!((0..1_000).all(|_| !rng.chance(0.0) && !rng.chance(f64::NAN) && rng.chance(1.0)));

        assert_eq!(rng.pick::<u8>(&[]), None);
        assert_eq!(rng.pick(&[9]), Some(&9));
        let items = [1, 2, 3];
        let picked: std::collections::BTreeSet<i32> =
            (0..100).filter_map(|_| rng.pick(&items).copied()).collect();
        assert_eq!(picked.len(), 3);

        let (low, high) = (
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(12),
        );
        let spans: std::collections::BTreeSet<_> =
            (0..200).map(|_| rng.between(low, high)).collect();
        assert_eq!(spans.len(), 3, "both ends included: {spans:?}");
        assert_eq!(
            rng.between(high, low),
            high,
            "an empty span gives its start"
        );

        let mut deck: Vec<u32> = (0..20).collect();
        rng.shuffle(&mut deck);
        assert_ne!(deck, (0..20).collect::<Vec<_>>());
        deck.sort_unstable();
        assert_eq!(
            deck,
            (0..20).collect::<Vec<_>>(),
            "a shuffle lost or duplicated an item"
        );
    }
}
