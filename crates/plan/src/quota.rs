//! Exact quotas by the largest-remainder method, in integer arithmetic.

/// Splits `total` into per-weight integer counts that sum to `total` exactly:
/// each count is the floor of its exact share, and the leftover units go to
/// the largest fractional remainders (ties to the earlier weight).
///
/// Weights are first quantized to 52-bit integers relative to the largest
/// weight, so the split is exact integer arithmetic (identical on every
/// machine). Weights must be finite and positive; a weight below 2^-53 of
/// the largest gets count 0.
///
/// ```
/// use seqfeed_plan::largest_remainder;
/// assert_eq!(largest_remainder(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
/// assert_eq!(largest_remainder(100, &[0.7, 0.2, 0.1]), vec![70, 20, 10]);
/// ```
pub fn largest_remainder(total: u64, weights: &[f64]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let max = weights.iter().cloned().fold(0.0f64, f64::max);
    if !(max.is_finite() && max > 0.0) {
        return vec![0; weights.len()];
    }
    let scale = (1u64 << 52) as f64;
    let q: Vec<u128> = weights
        .iter()
        .map(|&w| {
            let x = (w / max * scale).round();
            if x.is_finite() && x > 0.0 {
                x as u128
            } else {
                0
            }
        })
        .collect();
    let sum: u128 = q.iter().sum();
    let t = u128::from(total);
    let mut counts: Vec<u64> = q.iter().map(|&w| (t * w / sum) as u64).collect();
    let rems: Vec<u128> = q.iter().map(|&w| t * w % sum).collect();
    let given: u64 = counts.iter().sum();
    let leftover = total - given;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| rems[b].cmp(&rems[a]).then(a.cmp(&b)));
    for &i in order.iter().take(leftover as usize) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_exactly_and_is_floor_or_ceil() {
        let cases: &[(u64, &[f64])] = &[
            (10, &[1.0, 1.0, 1.0]),
            (7, &[0.5, 0.25, 0.25]),
            (1, &[1.0, 1.0]),
            (244_140_625, &[0.6, 0.3, 0.1]),
            (1_000_003, &[1e-3, 7.0, 3.3, 0.01]),
            (999, &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]),
        ];
        for &(total, w) in cases {
            let c = largest_remainder(total, w);
            assert_eq!(c.iter().sum::<u64>(), total, "{total} {w:?}");
            let s: f64 = w.iter().sum();
            for (ci, wi) in c.iter().zip(w) {
                let exact = total as f64 * wi / s;
                assert!(
                    (*ci as f64) >= exact.floor() - 1e-6 && (*ci as f64) <= exact.ceil() + 1e-6,
                    "{total} {w:?}: {ci} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(largest_remainder(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(largest_remainder(8, &[0.5, 0.3, 0.2]), vec![4, 2, 2]);
        // 3, 1.5, 1.5: the one leftover unit goes to the earlier of the tie.
        assert_eq!(largest_remainder(6, &[2.0, 1.0, 1.0]), vec![3, 2, 1]);
        assert_eq!(largest_remainder(0, &[1.0, 2.0]), vec![0, 0]);
        // Weights need not sum to one.
        assert_eq!(largest_remainder(100, &[7.0, 2.0, 1.0]), vec![70, 20, 10]);
    }
}
