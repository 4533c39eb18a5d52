//! The stable router: routing key → bucket in `[0, 10000)` → provider.
//!
//! Hash (fixed forever; changing it moves users between providers):
//! `seed   = XXH3-64("switchyard\0" ++ from ++ "\0" ++ to, seed 0)`
//! (a migration of `migrations:` appends `"\0" ++ name`, so each moves its own cohorts)
//! `bucket = XXH3-64(key, seed) mod 10000`
//! A bucket below `percent × 100` goes to `to`, the rest to `from`. Because a key's
//! bucket never changes, raising the percent only ever moves keys `from` → `to`. The
//! mirrored cohorts are bucket ranges too, so they are as stable: the shadow's, the top of
//! `from`'s range ([`Router::mirrored`]), and the live control's at the last phase, the top
//! of the space ([`Router::controlled`]).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub const BUCKETS: u16 = 10_000;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    From,
    To,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    seed: u64,
}

impl Router {
    pub fn new(from: &str, to: &str) -> Self {
        let mut salt = Vec::with_capacity(12 + from.len() + to.len());
        salt.extend_from_slice(b"switchyard\0");
        salt.extend_from_slice(from.as_bytes());
        salt.push(0);
        salt.extend_from_slice(to.as_bytes());
        Router {
            seed: xxh3_64(&salt),
        }
    }

    /// For a migration of `migrations:`: its name salts the hash too, so two migrations at
    /// the same percent move different cohorts.
    pub fn named(name: &str, from: &str, to: &str) -> Self {
        let mut salt = Vec::with_capacity(13 + name.len() + from.len() + to.len());
        salt.extend_from_slice(b"switchyard\0");
        salt.extend_from_slice(from.as_bytes());
        salt.push(0);
        salt.extend_from_slice(to.as_bytes());
        salt.push(0);
        salt.extend_from_slice(name.as_bytes());
        Router {
            seed: xxh3_64(&salt),
        }
    }

    #[inline]
    pub fn bucket(&self, key: &[u8]) -> u16 {
        (xxh3_64_with_seed(key, self.seed) % u64::from(BUCKETS)) as u16
    }

    /// `to_buckets` is `percent × 100`: 0 sends everything to `from`, 10000 everything to `to`.
    #[inline]
    pub fn side(&self, key: &[u8], to_buckets: u16) -> Side {
        Self::side_of(self.bucket(key), to_buckets)
    }

    /// The rule, for a bucket already computed: below `to_buckets` goes to `to`.
    #[inline]
    pub fn side_of(bucket: u16, to_buckets: u16) -> Side {
        if bucket < to_buckets {
            Side::To
        } else {
            Side::From
        }
    }

    /// The part of the bucket space `from` serves that is mirrored: its top `shadow_buckets`
    /// per 10000, so the shadow cohort is stable for a phase and shrinks as keys move to `to`.
    #[inline]
    pub fn mirrored(bucket: u16, to_buckets: u16, shadow_buckets: u16) -> bool {
        let from_span = 10_000u32 - u32::from(to_buckets);
        let threshold = 10_000u32 - from_span * u32::from(shadow_buckets) / 10_000;
        shadow_buckets > 0 && bucket >= to_buckets && u32::from(bucket) >= threshold
    }

    /// Whether the request in `bucket` is mirrored to `from` as the live control: the last
    /// `control_buckets` of the space, a stable cohort.
    #[inline]
    pub fn controlled(bucket: u16, control_buckets: u16) -> bool {
        control_buckets > 0 && u32::from(bucket) >= 10_000 - u32::from(control_buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mirrored_share_of_the_from_side() {
        let count = |to, sh| {
            (0..10_000u16)
                .filter(|b| Router::mirrored(*b, to, sh))
                .count()
        };
        assert_eq!(count(0, 1000), 1000);
        assert_eq!(count(5000, 1000), 500);
        assert_eq!(count(5000, 10_000), 5000);
        assert_eq!(count(10_000, 10_000), 0);
        assert_eq!(count(2500, 0), 0);
        // never a bucket that goes to `to`
        assert!((0..2500u16).all(|b| !Router::mirrored(b, 2500, 10_000)));
    }

    /// Pinned vectors: if this test fails, routing changed and users would move.
    #[test]
    fn pinned_vectors() {
        let r = Router::new("old", "new");
        let got: Vec<u16> = ["", "user-1", "user-2", "req-0001", "x"]
            .iter()
            .map(|k| r.bucket(k.as_bytes()))
            .collect();
        assert_eq!(got, PINNED_OLD_NEW);
        let r2 = Router::new("a", "b");
        assert_eq!(r2.bucket(b"user-1"), PINNED_A_B_USER1);
    }

    const PINNED_OLD_NEW: [u16; 5] = [8724, 7315, 9438, 9026, 2281];
    const PINNED_A_B_USER1: u16 = 2971;

    /// The algorithm itself is XXH3-64: check against the reference value for "".
    #[test]
    fn algorithm_is_xxh3() {
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn salt_changes_cohorts() {
        let a = Router::new("old", "new");
        let b = Router::new("new", "old");
        let differ = (0..1000)
            .filter(|i| {
                a.bucket(format!("k{i}").as_bytes()) != b.bucket(format!("k{i}").as_bytes())
            })
            .count();
        assert!(differ > 900, "only {differ} of 1000 keys changed bucket");
    }

    #[test]
    fn split_is_close_to_percent() {
        let r = Router::new("old", "new");
        let to = (0..20_000)
            .filter(|i| r.side(format!("user-{i}").as_bytes(), 2500) == Side::To)
            .count();
        // 25% of 20000 = 5000; binomial sd ≈ 61, allow ±5 sd
        assert!((4700..=5300).contains(&to), "{to}");
    }

    #[test]
    fn edges() {
        let r = Router::new("old", "new");
        for i in 0..1000 {
            let k = format!("k{i}");
            assert_eq!(r.side(k.as_bytes(), 0), Side::From);
            assert_eq!(r.side(k.as_bytes(), BUCKETS), Side::To);
        }
    }

    proptest! {
        #[test]
        fn raising_percent_never_moves_a_key_back(key in proptest::collection::vec(any::<u8>(), 0..64), lo in 0u16..=10000, hi in 0u16..=10000) {
            let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            let r = Router::new("old", "new");
            if r.side(&key, lo) == Side::To {
                prop_assert_eq!(r.side(&key, hi), Side::To);
            }
            prop_assert!(r.bucket(&key) < BUCKETS);
        }
    }
}
