//! docs/PLAN.md, "Reproducing the plan", reimplemented from the text alone
//! (no call into the crate's shuffles, keys or quotas) and compared with the
//! crate's plans, so the document cannot drift from the code.
#![allow(clippy::unwrap_used)]

use seqfeed_plan::{FileShape, Plan, PlanConfig, SourceShape};

// ---- The reference, written from docs/PLAN.md ----

fn seed_key(seed: u64, label: &str) -> u64 {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend_from_slice(label.as_bytes());
    let out = blake3::derive_key("seqfeed plan v1 key", &material);
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51afd7ed558ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ceb9fe1a85ec53);
    z ^ (z >> 33)
}

fn derive_key(key: u64, i: u64) -> u64 {
    mix64(key ^ mix64(i.wrapping_add(0x9e3779b97f4a7c15)))
}

const C: [u64; 4] = [
    0x243f6a8885a308d3,
    0x13198a2e03707344,
    0xa4093822299f31d0,
    0x082efa98ec4e6c89,
];

fn feistel(n: u64, key: u64, x: u64) -> u64 {
    if n <= 1 {
        return x;
    }
    let k = 64 - (n - 1).leading_zeros();
    let (u, v) = (k / 2, k - k / 2);
    let mask = |w: u32| (1u64 << w) - 1; // w <= 32 here
    let f = |r: usize, x: u64| {
        let mut z = (x ^ key ^ C[r]).wrapping_mul(0x9e3779b97f4a7c15);
        z ^= z >> 29;
        z.wrapping_mul(0xd6e8feb86659fd93) >> 32
    };
    let network = |x: u64| {
        let (mut a, mut b) = (x >> v, x & mask(v));
        for r in 0..4 {
            let m = if r % 2 == 0 { u } else { v };
            (a, b) = (b, a ^ (f(r, b) & mask(m)));
        }
        (a << v) | b
    };
    let mut y = network(x);
    while y >= n {
        y = network(y);
    }
    y
}

fn split_counts(total: u64, weights: &[f64]) -> Vec<u64> {
    let m = weights.iter().cloned().fold(0.0, f64::max);
    let q: Vec<u128> = weights
        .iter()
        .map(|w| {
            let x = (w / m * 4503599627370496.0).round(); // 2^52, halves away from zero
            if x > 0.0 {
                x as u128
            } else {
                0
            }
        })
        .collect();
    let s: u128 = q.iter().sum();
    let t = u128::from(total);
    let mut c: Vec<u64> = q.iter().map(|&qi| (t * qi / s) as u64).collect();
    let r: Vec<u128> = q.iter().map(|&qi| t * qi % s).collect();
    let left = total - c.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..q.len()).collect();
    order.sort_by(|&a, &b| r[b].cmp(&r[a]).then(a.cmp(&b)));
    for &i in &order[..left as usize] {
        c[i] += 1;
    }
    c
}

struct Source {
    name: String,
    weight: f64,
    counts: Vec<u64>,
    /// Held-out sequences (indices within the source), by [`held_out`].
    held: Vec<u64>,
}

/// The split's choice ("Splits" in docs/PLAN.md): `fraction` or `count`.
fn held_out(
    split_seed: u64,
    name: &str,
    size: u64,
    fraction: Option<f64>,
    count: Option<u64>,
) -> Vec<u64> {
    let mut material = split_seed.to_le_bytes().to_vec();
    material.extend_from_slice(format!("source:{name}").as_bytes());
    let out = blake3::derive_key("seqfeed plan v1 split", &material);
    let key = u64::from_le_bytes(out[..8].try_into().unwrap());
    let h = |j: u64| derive_key(key, j);
    if let Some(f) = fraction {
        let t = (f * 2f64.powi(64)) as u64;
        (0..size).filter(|&j| h(j) < t).collect()
    } else if let Some(n) = count {
        let mut all: Vec<(u64, u64)> = (0..size).map(|j| (h(j), j)).collect();
        all.sort();
        let mut v: Vec<u64> = all[..n as usize].iter().map(|&(_, j)| j).collect();
        v.sort();
        v
    } else {
        Vec::new()
    }
}

/// `(source, file, index within the file)` of every position `< limit`.
fn reference(
    seed: u64,
    b: u64,
    stratified: bool,
    n: u64,
    sources: &[Source],
    limit: u64,
) -> Vec<(u32, u32, u64)> {
    let steps = n.div_ceil(b);
    let total = steps * b;
    let weights: Vec<f64> = sources.iter().map(|s| s.weight).collect();
    let counts = split_counts(if stratified { b } else { total }, &weights);
    let ends: Vec<u64> = counts
        .iter()
        .scan(0, |acc, &c| {
            *acc += c;
            Some(*acc)
        })
        .collect();
    let shuffle = seed_key(seed, "shuffle");
    (0..limit.min(total))
        .map(|p| {
            let slot = if stratified {
                feistel(b, derive_key(shuffle, p / b), p % b)
            } else {
                feistel(total, shuffle, p)
            };
            let i = ends.iter().position(|&e| slot < e).unwrap();
            let start = ends[i] - counts[i];
            let k = if stratified {
                (p / b) * counts[i] + slot - start
            } else {
                slot - start
            };
            let src = &sources[i];
            let all: u64 = src.counts.iter().sum();
            let size = all - src.held.len() as u64;
            let key = derive_key(seed_key(seed, &format!("source:{}", src.name)), k / size);
            // The rank among the kept sequences, then its index past the held-out ones.
            let mut x = feistel(size, key, k % size);
            for &h in &src.held {
                if h <= x {
                    x += 1;
                }
            }
            let mut before = 0;
            for (f, &c) in src.counts.iter().enumerate() {
                if x < before + c {
                    return (i as u32, f as u32, x - before);
                }
                before += c;
            }
            unreachable!()
        })
        .collect()
}

// ---- Comparison with the crate ----

fn shapes(sources: &[Source]) -> Vec<SourceShape> {
    sources
        .iter()
        .map(|s| SourceShape {
            name: s.name.clone(),
            fingerprint: format!("fp-{}", s.name),
            seq_len: 32,
            token_bytes: 4,
            tokenizer: None,
            special_tokens: Default::default(),
            files: s
                .counts
                .iter()
                .enumerate()
                .map(|(f, &count)| FileShape {
                    path: format!("{}/part-{f:05}.seq", s.name),
                    count,
                    data_offset: 4096,
                })
                .collect(),
        })
        .collect()
}

fn check(seed: u64, b: u64, stratified: bool, n: u64, sources: &[Source]) {
    check_with(seed, b, stratified, n, sources, "")
}

fn check_with(seed: u64, b: u64, stratified: bool, n: u64, sources: &[Source], extra: &str) {
    let mut text = format!(
        "seed = {seed}\nglobal_batch = {b}\nmode = \"{}\"\nmax_epochs = 1000.0\n[run]\nsequences = {n}\n",
        if stratified { "stratified" } else { "global" }
    );
    for s in sources {
        text += &format!(
            "[[sources]]\nname = \"{}\"\nweight = {:?}\n",
            s.name, s.weight
        );
    }
    text += extra;
    let plan = Plan::new(PlanConfig::from_toml_str(&text).unwrap(), shapes(sources)).unwrap();
    let limit = 600;
    let want = reference(seed, b, stratified, n, sources, limit);
    assert_eq!(want.len() as u64, limit.min(plan.total_sequences()));
    for (p, &(source, file, index)) in want.iter().enumerate() {
        let r = plan.locate(p as u64);
        assert_eq!(
            (r.source, r.file, r.index),
            (source, file, index),
            "position {p} of seed {seed}, B {b}, stratified {stratified}"
        );
        assert_eq!(r.offset, 4096 + index * 128);
    }
}

fn src(name: &str, weight: f64, counts: &[u64]) -> Source {
    Source {
        name: name.into(),
        weight,
        counts: counts.to_vec(),
        held: Vec::new(),
    }
}

#[test]
fn documented_derivation_matches_the_crate() {
    // Three sources, uneven and empty files, an upsampled source.
    let three = [
        src("web", 0.6, &[500, 0, 700, 3]),
        src("code", 0.3, &[400, 401]),
        src("books", 0.1, &[50, 50, 11]),
    ];
    for seed in [0, 1234, i64::MAX as u64] {
        check(seed, 64, false, 64 * 40, &three);
        check(seed, 64, true, 64 * 40, &three);
    }
    // Weights that quantize to halves, a run that is not whole steps,
    // a source with one sequence, an odd batch.
    let halves = [
        src("a", 3.0, &[1000]),
        src("b", 1.5, &[7, 7, 7]),
        src("c", 1.0 / 3.0, &[1]),
    ];
    check(7, 10, false, 995, &halves);
    check(7, 10, true, 995, &halves);
    // A large run: the global shuffle over many bits.
    let big = [src("x", 0.25, &[1 << 20, 5]), src("y", 0.75, &[3_000_001])];
    check(99, 1024, false, 1 << 22, &big);
}

#[test]
fn documented_seed_key_is_blake3_derive_key_little_endian() {
    // Pins the derivation's byte layout on a known value, so a change of
    // context string or byte order is caught even if both sides changed.
    let k = seed_key(1234, "shuffle");
    let mut h = blake3::Hasher::new_derive_key("seqfeed plan v1 key");
    h.update(&[0xd2, 0x04, 0, 0, 0, 0, 0, 0]);
    h.update(b"shuffle");
    let out = h.finalize();
    assert_eq!(
        k,
        u64::from_le_bytes(out.as_bytes()[..8].try_into().unwrap())
    );
    assert_eq!(seqfeed_plan::derive_key(k, 5), derive_key(k, 5));
    assert_eq!(seqfeed_plan::mix64(k), mix64(k));
}

#[test]
fn documented_quotas_match_the_crate() {
    // 0.5 + 2^-53 against 1.0 quantizes to exactly 2^51 + 0.5: a half.
    let half = 0.5 + f64::EPSILON / 2.0;
    assert_eq!((half * 4503599627370496.0).fract(), 0.5);
    let cases: &[&[f64]] = &[
        &[1.0, half],
        &[half, 1.0, half],
        &[0.6, 0.3, 0.1],
        &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        &[7.0, 1e-9, 2.5, 0.125],
    ];
    for w in cases {
        for total in [0, 1, 2, 3, 10, 999, 1 << 40, (1 << 62) - 1] {
            assert_eq!(
                split_counts(total, w),
                seqfeed_plan::largest_remainder(total, w),
                "{total} {w:?}"
            );
        }
    }
}

#[test]
fn documented_split_matches_the_crate() {
    let mut sources = [
        src("web", 0.6, &[500, 0, 700, 3]),
        src("code", 0.4, &[400, 401]),
    ];
    sources[0].held = held_out(42, "web", 1203, Some(0.1), None);
    sources[1].held = held_out(42, "code", 801, None, Some(33));
    // `[split]` after the last `[[sources]]` table: the default fraction,
    // with code's own count (set below in the config text).
    let extra = "[split]\nseed = 42\nholdout = 0.1\n";
    let with_code_count = |stratified| {
        let mut text = format!(
            "seed = 9\nglobal_batch = 16\nmode = \"{}\"\nmax_epochs = 1000.0\n[run]\nsequences = 4000\n",
            if stratified { "stratified" } else { "global" }
        );
        text += "[[sources]]\nname = \"web\"\nweight = 0.6\n";
        text += "[[sources]]\nname = \"code\"\nweight = 0.4\nholdout_sequences = 33\n";
        text += extra;
        Plan::new(PlanConfig::from_toml_str(&text).unwrap(), shapes(&sources)).unwrap()
    };
    for stratified in [false, true] {
        let plan = with_code_count(stratified);
        let want = reference(9, 16, stratified, 4000, &sources, 600);
        for (p, &(source, file, index)) in want.iter().enumerate() {
            let r = plan.locate(p as u64);
            assert_eq!(
                (r.source, r.file, r.index),
                (source, file, index),
                "position {p}"
            );
        }
        let val: Vec<(u32, u64)> = plan
            .validation_iter()
            .map(|r| {
                let before: u64 = sources[r.source as usize].counts[..r.file as usize]
                    .iter()
                    .sum();
                (r.source, before + r.index)
            })
            .collect();
        let want: Vec<(u32, u64)> = sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.held.iter().map(move |&j| (i as u32, j)))
            .collect();
        assert_eq!(val, want);
    }
    // Without the split, the same reference with nothing held out.
    let plain = [
        src("web", 0.6, &[500, 0, 700, 3]),
        src("code", 0.4, &[400, 401]),
    ];
    check_with(9, 16, false, 4000, &plain, "");
}
