//! Held-out (validation) sequences of a source: which are held out, and the
//! map from a training rank to a sequence index that skips them.

use crate::bijection::derive_key;
use crate::config::Holdout;
use crate::PlanError;

/// Which stream of the plan: the training run or the held-out sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training run: `steps * B` positions mixed from the kept sequences.
    #[default]
    Train,
    /// The held-out sequences of every source: sources in config order, each
    /// one's held-out sequences in ascending index order.
    Validation,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Validation => "validation",
        })
    }
}

/// The key of source `name`'s hold-out: BLAKE3 `derive_key` with context
/// `seqfeed plan v1 split` over `seed` (8 bytes little-endian) and
/// `source:<name>`; the first 8 output bytes, little-endian.
pub(crate) fn split_key(seed: u64, name: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("seqfeed plan v1 split");
    h.update(&seed.to_le_bytes());
    h.update(b"source:");
    h.update(name.as_bytes());
    let out = h.finalize();
    let b = out.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The hold-out threshold of a fraction in `[0, 1)`: `floor(f * 2^64)`,
/// exact (scaling a double by a power of two is exact).
pub(crate) fn threshold(f: f64) -> u64 {
    (f * 18_446_744_073_709_551_616.0) as u64
}

/// The sorted indices of the held-out sequences of a source of `size`
/// sequences. Costs `size` hash evaluations; memory is one `u64` per
/// held-out sequence. Errors name the source.
pub(crate) fn held_out(
    name: &str,
    size: u64,
    holdout: Holdout,
    key: u64,
) -> Result<Vec<u64>, PlanError> {
    let bad = |message: String| PlanError::Invalid {
        field: format!("source '{name}'"),
        message,
    };
    let held: Vec<u64> = match holdout {
        Holdout::None => Vec::new(),
        Holdout::Fraction(f) => {
            let t = threshold(f);
            (0..size).filter(|&j| derive_key(key, j) < t).collect()
        }
        Holdout::Count(n) => {
            if n >= size {
                return Err(bad(format!(
                    "holdout_sequences = {n} is not below the source's {size} sequences: nothing would be left to train on"
                )));
            }
            // The n smallest hashes (distinct: the hash is a bijection of u64
            // for a fixed key).
            let mut heap = std::collections::BinaryHeap::with_capacity(n as usize + 1);
            for j in 0..size {
                let h = derive_key(key, j);
                if (heap.len() as u64) < n {
                    heap.push((h, j));
                } else if heap.peek().is_some_and(|&(top, _)| h < top) {
                    heap.pop();
                    heap.push((h, j));
                }
            }
            let mut v: Vec<u64> = heap.into_iter().map(|(_, j)| j).collect();
            v.sort_unstable();
            v
        }
    };
    if held.len() as u64 == size {
        return Err(bad(format!(
            "the hold-out ({holdout}) takes all {size} sequences: nothing would be left to train on"
        )));
    }
    Ok(held)
}

/// The index of the `r`-th kept (not held-out) sequence, given the sorted
/// held-out indices: `r + m`, where `m` counts the held-out `h_i` with
/// `h_i - i <= r` (`h_i - i` kept sequences lie before `h_i`). `O(log held)`.
#[inline]
pub(crate) fn kept_index(held: &[u64], r: u64) -> u64 {
    let (mut lo, mut hi) = (0usize, held.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if held[mid] - mid as u64 <= r {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    r + lo as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_index_skips_the_held_out() {
        let held = [0u64, 3, 4, 9];
        let kept: Vec<u64> = (0..8).map(|r| kept_index(&held, r)).collect();
        assert_eq!(kept, vec![1, 2, 5, 6, 7, 8, 10, 11]);
        assert_eq!(kept_index(&[], 5), 5);
    }

    #[test]
    fn thresholds_are_exact() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), 1 << 63);
        assert_eq!(threshold(0.25), 1 << 62);
        assert_eq!(
            threshold(1.0 - f64::EPSILON / 2.0),
            u64::MAX - (1 << 11) + 1
        );
    }
}
