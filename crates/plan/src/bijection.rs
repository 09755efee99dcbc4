//! Keyed bijections over `[0, n)`: an unbalanced Feistel network on the
//! smallest power of two that holds `n`, with cycle walking.
//!
//! The network works on `k = bits(n - 1)` bits split into a left part of
//! `k / 2` bits and a right part of `k - k / 2` bits. Each round XORs the
//! keyed mix of one part into the other and swaps them (the widths alternate,
//! as in NIST FF1 with radix 2), so every round, and the network, is a
//! bijection of `[0, 2^k)`. Cycle walking (apply again while the result is
//! `>= n`) restricts it to `[0, n)`: the cycle through `x < n` returns to
//! `x`, so the walk ends, and since `2^k < 2n` the expected number of
//! applications is below 2. Memory is a handful of words; a lookup is `O(1)`
//! expected.

/// Number of Feistel rounds. Even, so the halves end with their starting widths.
pub const ROUNDS: usize = 4;

/// Round constants (from the digits of pi), XORed into the key for each round.
const ROUND_CONSTANTS: [u64; ROUNDS] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The 64-bit finalizer of MurmurHash3: a fast bijective mixer with full
/// avalanche. Used to derive keys (for example one key per epoch of a
/// source) from a base key.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// Derives a sub-key from `key` and an index (an epoch, a step, a source).
#[inline]
pub fn derive_key(key: u64, index: u64) -> u64 {
    mix64(key ^ mix64(index.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// A keyed pseudo-random permutation of `[0, n)`.
///
/// ```
/// use seqfeed_plan::Feistel;
/// let p = Feistel::new(10, 42);
/// let mut seen: Vec<u64> = (0..10).map(|x| p.apply(x)).collect();
/// seen.sort();
/// assert_eq!(seen, (0..10).collect::<Vec<_>>());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feistel {
    n: u64,
    left_bits: u32,
    right_bits: u32,
    key: u64,
}

impl Feistel {
    /// A permutation of `[0, n)` keyed by `key`. `n` of 0 or 1 gives the identity.
    #[inline]
    pub fn new(n: u64, key: u64) -> Self {
        let bits = if n <= 1 {
            0
        } else {
            64 - (n - 1).leading_zeros()
        };
        let left_bits = bits / 2;
        Feistel {
            n,
            left_bits,
            right_bits: bits - left_bits,
            key,
        }
    }

    /// The size of the domain.
    #[inline]
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether the domain is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The key.
    #[inline]
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The same network under another key (no recomputation of the widths).
    #[inline]
    pub fn with_key(&self, key: u64) -> Self {
        Feistel { key, ..*self }
    }

    /// The image of `x`. Requires `x < n`; otherwise the result is `x`
    /// unchanged for `n <= 1` and unspecified (but in `[0, 2^k)`) otherwise.
    #[inline]
    pub fn apply(&self, x: u64) -> u64 {
        if self.n <= 1 {
            return x;
        }
        let mut y = self.network(x);
        // Cycle walking: the cycle through x < n comes back below n.
        while y >= self.n {
            y = self.network(y);
        }
        y
    }

    /// The inverse permutation: `invert(apply(x)) == x` for `x < n`.
    pub fn invert(&self, y: u64) -> u64 {
        if self.n <= 1 {
            return y;
        }
        let mut x = self.network_inverse(y);
        while x >= self.n {
            x = self.network_inverse(x);
        }
        x
    }

    /// One pass of the Feistel network over `[0, 2^k)`.
    #[inline]
    fn network(&self, x: u64) -> u64 {
        let (u, v) = (self.left_bits, self.right_bits);
        let mut a = x >> v; // u bits
        let mut b = x & mask(v); // v bits
        let mut r = 0;
        while r < ROUNDS {
            // Even round: a has u bits; odd round: a has v bits.
            let m = if r % 2 == 0 { u } else { v };
            let c = a ^ (self.round(r, b) & mask(m));
            a = b;
            b = c;
            r += 1;
        }
        (a << v) | b
    }

    fn network_inverse(&self, y: u64) -> u64 {
        let (u, v) = (self.left_bits, self.right_bits);
        let mut a = y >> v;
        let mut b = y & mask(v);
        let mut r = ROUNDS;
        while r > 0 {
            r -= 1;
            let m = if r % 2 == 0 { u } else { v };
            // Forward: (a, b) -> (b, a ^ F(b)).
            let prev_b = a;
            let prev_a = b ^ (self.round(r, prev_b) & mask(m));
            a = prev_a;
            b = prev_b;
        }
        (a << v) | b
    }

    /// The keyed round function: two multiplies with a fold between; the
    /// result is the high 32 bits of the second product, which depend on
    /// every bit of the input and the key. Halves are at most 32 bits.
    #[inline]
    fn round(&self, r: usize, x: u64) -> u64 {
        let mut z = (x ^ self.key ^ ROUND_CONSTANTS[r]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^= z >> 29;
        z.wrapping_mul(0xd6e8_feb8_6659_fd93) >> 32
    }
}

#[inline]
fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_permutation(n: u64, key: u64) {
        let p = Feistel::new(n, key);
        let mut seen = vec![false; n as usize];
        for x in 0..n {
            let y = p.apply(x);
            assert!(y < n, "n={n} key={key}: {x} -> {y} out of range");
            assert!(!seen[y as usize], "n={n} key={key}: duplicate image {y}");
            seen[y as usize] = true;
            assert_eq!(p.invert(y), x, "n={n} key={key}: inverse of {y}");
        }
        assert!(seen.iter().all(|&s| s), "n={n} key={key}: missing image");
    }

    #[test]
    fn is_a_permutation_for_many_sizes() {
        for n in [
            0u64,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            9,
            10,
            15,
            16,
            17,
            31,
            33,
            100,
            127,
            128,
            129,
            1000,
            1023,
            1024,
            1025,
            4097,
            65_535,
            65_536,
            65_537,
            100_003,
            1 << 20,
            (1 << 20) + 1,
        ] {
            for key in [0u64, 1, 0xdead_beef, u64::MAX] {
                assert_permutation(n, key);
            }
        }
    }

    #[test]
    fn different_keys_give_different_permutations() {
        let n = 1000;
        let a: Vec<u64> = (0..n).map(|x| Feistel::new(n, 1).apply(x)).collect();
        let b: Vec<u64> = (0..n).map(|x| Feistel::new(n, 2).apply(x)).collect();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // A random pair of permutations agrees on about one point.
        assert!(same < 10, "{same} fixed agreements");
    }

    #[test]
    fn not_the_identity_and_few_fixed_points() {
        let n = 100_000u64;
        let p = Feistel::new(n, 7);
        let fixed = (0..n).filter(|&x| p.apply(x) == x).count();
        assert!(fixed < 10, "{fixed} fixed points");
    }

    #[test]
    fn large_domains_stay_in_range() {
        for n in [u64::MAX, 1 << 63, (1 << 40) + 12_345, 244_140_625] {
            let p = Feistel::new(n, 99);
            for x in [0, 1, n / 2, n - 1] {
                let y = p.apply(x);
                assert!(y < n);
                assert_eq!(p.invert(y), x);
            }
        }
    }

    /// Over many keys, the image of one point is uniform over the domain
    /// (chi-square), and images of neighbours are not correlated.
    #[test]
    fn images_are_uniform_over_keys() {
        for n in [10u64, 100, 1000, 3001] {
            let keys = 40 * n;
            let mut bins = vec![0u64; n as usize];
            let mut successor = 0u64;
            for key in 0..keys {
                let p = Feistel::new(n, derive_key(0x5eed, key));
                let y = p.apply(3);
                bins[y as usize] += 1;
                if p.apply(4) == (y + 1) % n {
                    successor += 1;
                }
            }
            let exp = keys as f64 / n as f64;
            let chi: f64 = bins.iter().map(|&c| (c as f64 - exp).powi(2) / exp).sum();
            let dof = (n - 1) as f64;
            assert!(
                (chi - dof).abs() < 5.0 * (2.0 * dof).sqrt(),
                "n={n}: chi {chi:.1} dof {dof}"
            );
            // P(f(4) = f(3) + 1) is about 1/(n-1): expect ~40 of 40n.
            assert!(successor < 100, "n={n}: {successor} successor pairs");
        }
    }

    proptest::proptest! {
        #[test]
        fn permutation_for_random_sizes(n in 0u64..5000, key in proptest::prelude::any::<u64>()) {
            assert_permutation(n, key);
        }
    }
}
