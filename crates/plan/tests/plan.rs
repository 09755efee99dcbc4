//! Behaviour of the plan: exactness, permutation, spread, elasticity, resume,
//! fingerprints and bad input.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use seqfeed_plan::{
    FileShape, MixingMode, Plan, PlanConfig, PlanError, SequenceRef, ShapesFile, SourceShape,
};

/// A source of `counts.len()` files with the given sequence counts.
fn shape(name: &str, counts: &[u64]) -> SourceShape {
    SourceShape {
        name: name.to_string(),
        fingerprint: format!("fp-{name}"),
        seq_len: 16,
        token_bytes: 2,
        tokenizer: None,
        special_tokens: Default::default(),
        files: counts
            .iter()
            .enumerate()
            .map(|(i, &count)| FileShape {
                path: format!("{name}/part-{i:05}.seq"),
                count,
                data_offset: 4096 + i as u64,
            })
            .collect(),
    }
}

fn config(text: &str) -> PlanConfig {
    PlanConfig::from_toml_str(text).unwrap()
}

fn three_sources(mode: &str, b: u64, steps: u64, max_epochs: f64) -> PlanConfig {
    config(&format!(
        r#"
        seed = 2024
        global_batch = {b}
        mode = "{mode}"
        max_epochs = {max_epochs:?}
        [run]
        steps = {steps}
        [[sources]]
        name = "web"
        weight = 0.5
        [[sources]]
        name = "code"
        weight = 0.3
        [[sources]]
        name = "books"
        weight = 0.2
        "#
    ))
}

fn three_shapes() -> Vec<SourceShape> {
    vec![
        shape("web", &[5000, 0, 7000, 3]),
        shape("code", &[4000, 4001]),
        shape("books", &[1500, 1500, 11]),
    ]
}

fn err_text(e: PlanError) -> String {
    e.to_string()
}

#[test]
fn quotas_are_exact_and_positions_biject_onto_draws() {
    for mode in ["global", "stratified"] {
        let plan = Plan::new(three_sources(mode, 96, 77, 1.0), three_shapes()).unwrap();
        let total = plan.total_sequences();
        assert_eq!(total, 96 * 77);
        let quotas: Vec<u64> = plan.sources().iter().map(|s| s.quota).collect();
        assert_eq!(quotas.iter().sum::<u64>(), total);
        if mode == "global" {
            assert_eq!(
                quotas,
                seqfeed_plan::largest_remainder(total, &[0.5, 0.3, 0.2])
            );
        } else {
            let shares = seqfeed_plan::largest_remainder(96, &[0.5, 0.3, 0.2]);
            assert_eq!(shares, vec![48, 29, 19]);
            assert_eq!(quotas, shares.iter().map(|s| s * 77).collect::<Vec<_>>());
        }
        // Every position maps to a distinct (source, draw) with draw < quota,
        // so the realized count of each source is its quota exactly.
        let mut seen: Vec<Vec<bool>> = quotas.iter().map(|&q| vec![false; q as usize]).collect();
        for p in 0..total {
            let (s, k) = plan.draw(p);
            assert!(
                k < quotas[s as usize],
                "{mode}: position {p} draw {k} past quota"
            );
            assert!(
                !seen[s as usize][k as usize],
                "{mode}: draw ({s},{k}) twice"
            );
            seen[s as usize][k as usize] = true;
        }
        assert!(
            seen.iter().flatten().all(|&x| x),
            "{mode}: a draw is missing"
        );
        assert_eq!(plan.count_sources(0..total), quotas);
    }
}

#[test]
fn one_epoch_uses_each_sequence_at_most_once() {
    // Quotas below every source size with max_epochs 1: no repeats at all.
    let plan = Plan::new(three_sources("global", 64, 100, 1.0), three_shapes()).unwrap();
    let mut seen = BTreeSet::new();
    for p in 0..plan.total_sequences() {
        let r = plan.locate(p);
        assert!(
            seen.insert((r.source, r.file, r.index)),
            "repeat at {p}: {r:?}"
        );
    }
}

#[test]
fn epochs_are_full_permutations_each_with_its_own_order() {
    let size = 10u64;
    let plan = Plan::new(
        config(
            r#"
            seed = 5
            global_batch = 7
            max_epochs = 4.0
            [run]
            sequences = 35
            [[sources]]
            name = "tiny"
            weight = 1
            "#,
        ),
        vec![shape("tiny", &[3, 0, 7])],
    )
    .unwrap();
    let s = &plan.sources()[0];
    assert_eq!((s.quota, s.size, s.max_repeats()), (35, size, 4));
    assert_eq!(s.sequences_at_max_repeats(), 5);
    let epochs: Vec<Vec<u64>> = (0..4)
        .map(|e| {
            (0..size)
                .filter(|j| e * size + j < 35)
                .map(|j| plan.source_index(0, e * size + j))
                .collect()
        })
        .collect();
    for (e, order) in epochs.iter().enumerate() {
        let set: BTreeSet<u64> = order.iter().copied().collect();
        assert_eq!(set.len(), order.len(), "epoch {e} repeats a sequence");
        assert!(set.iter().all(|&i| i < size));
        if order.len() as u64 == size {
            assert_eq!(set, (0..size).collect(), "epoch {e} misses a sequence");
        }
    }
    assert!(
        epochs[0] != epochs[1] || epochs[1] != epochs[2],
        "epochs share one order"
    );
    // Usage counts over the run: 3 or 4 each, total 35.
    let mut uses: HashMap<(u32, u64), u64> = HashMap::new();
    for p in 0..plan.total_sequences() {
        let r = plan.locate(p);
        *uses.entry((r.file, r.index)).or_default() += 1;
    }
    assert_eq!(uses.len() as u64, size);
    assert!(uses.values().all(|&u| u == 3 || u == 4), "{uses:?}");
    assert_eq!(uses.values().sum::<u64>(), 35);
}

#[test]
fn repetition_limit_error_lists_every_source() {
    let mut shapes = three_shapes();
    shapes[2] = shape("books", &[100]);
    let e = Plan::new(three_sources("global", 64, 100, 2.0), shapes).unwrap_err();
    let text = err_text(e);
    // books: quota 1280 of 100 sequences = 12.8 epochs > 2.
    for needle in [
        "web",
        "code",
        "books",
        "1280",
        "100",
        "12.8000",
        "limit",
        "max_epochs",
        "over the limit",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(text.matches("over the limit").count(), 1, "{text}");
}

#[test]
fn per_source_limit_overrides_the_default() {
    let cfg = config(
        r#"
        seed = 1
        global_batch = 10
        [run]
        sequences = 100
        [[sources]]
        name = "a"
        weight = 1
        [[sources]]
        name = "b"
        weight = 1
        max_epochs = 5.0
        "#,
    );
    let shapes = vec![shape("a", &[60]), shape("b", &[10])];
    let plan = Plan::new(cfg.clone(), shapes.clone()).unwrap();
    assert_eq!(plan.sources()[1].max_repeats(), 5);
    let mut tight = cfg;
    tight.sources[1].max_epochs = Some(4.9);
    assert!(matches!(
        Plan::new(tight, shapes),
        Err(PlanError::RepetitionLimit { .. })
    ));
}

/// Chi-square statistic of per-source counts in every window of `b`
/// consecutive positions, summed over windows, and the largest per-window
/// deviation in standard deviations of the hypergeometric count.
fn spread(sources: &[u32], b: usize, shares: &[f64]) -> (f64, usize, f64) {
    let k = shares.len();
    let mut chi = 0.0;
    let mut worst = 0.0f64;
    let windows = sources.len() / b;
    for w in 0..windows {
        let mut c = vec![0usize; k];
        for &s in &sources[w * b..(w + 1) * b] {
            c[s as usize] += 1;
        }
        for i in 0..k {
            let exp = b as f64 * shares[i];
            let d = c[i] as f64 - exp;
            chi += d * d / exp;
            worst = worst.max(d.abs() / (exp * (1.0 - shares[i])).sqrt());
        }
    }
    (chi, windows * (k - 1), worst)
}

#[test]
fn sources_are_well_spread_in_every_batch_window() {
    for seed in [2024u64, 1, 77] {
        check_spread(seed);
    }
}

fn check_spread(seed: u64) {
    let b = 256u64;
    let mut cfg = three_sources("global", b, 400, 1.0);
    cfg.seed = seed;
    let plan = Plan::new(cfg, {
        let mut s = three_shapes();
        for x in &mut s {
            x.files.push(FileShape {
                path: format!("{}/big.seq", x.name),
                count: 100_000,
                data_offset: 0,
            });
        }
        s
    })
    .unwrap();
    let total = plan.total_sequences();
    let sources: Vec<u32> = (0..total).map(|p| plan.draw(p).0).collect();
    let shares: Vec<f64> = plan
        .sources()
        .iter()
        .map(|s| s.quota as f64 / total as f64)
        .collect();
    let (chi, dof, worst) = spread(&sources, b as usize, &shares);
    // Chi-square with `dof` degrees of freedom: mean dof, sd sqrt(2 dof).
    // Sampling without replacement shrinks it slightly; allow 5 sd either way.
    let sd = (2.0 * dof as f64).sqrt();
    assert!(
        (chi - dof as f64).abs() < 5.0 * sd,
        "chi-square {chi:.1} vs dof {dof} (sd {sd:.1})"
    );
    assert!(worst < 5.0, "a window deviates by {worst:.2} sd");
    // Windows not aligned to steps are spread as well.
    let (chi2, dof2, _) = spread(&sources[b as usize / 2..], b as usize, &shares);
    assert!((chi2 - dof2 as f64).abs() < 5.0 * (2.0 * dof2 as f64).sqrt());

    // The check has power: an unshuffled order (sources in runs) fails it.
    let mut sorted = sources.clone();
    sorted.sort_unstable();
    let (chi_bad, _, worst_bad) = spread(&sorted, b as usize, &shares);
    assert!((chi_bad - dof as f64).abs() > 5.0 * sd && worst_bad > 5.0);
}

#[test]
fn stratified_batches_hold_exact_shares_in_shuffled_order() {
    let b = 96u64;
    let plan = Plan::new(three_sources("stratified", b, 50, 1.0), three_shapes()).unwrap();
    assert_eq!(plan.mode(), MixingMode::Stratified);
    let shares: Vec<u64> = plan
        .sources()
        .iter()
        .map(|s| s.per_batch.unwrap())
        .collect();
    let mut orders = BTreeSet::new();
    for step in 0..plan.steps() {
        let block = plan.step_block(step).unwrap();
        let mut c = vec![0u64; 3];
        for r in &block {
            c[r.source as usize] += 1;
        }
        assert_eq!(c, shares, "step {step}");
        orders.insert(block.iter().map(|r| r.source).collect::<Vec<_>>());
    }
    assert!(
        orders.len() > 45,
        "batch orders repeat: {} distinct",
        orders.len()
    );
}

#[test]
fn resolution_is_consistent_with_files() {
    let plan = Plan::new(three_sources("global", 32, 200, 1.0), three_shapes()).unwrap();
    let shapes = three_shapes();
    for p in 0..plan.total_sequences() {
        let r = plan.locate(p);
        let f = &shapes[r.source as usize].files[r.file as usize];
        assert!(r.index < f.count, "{r:?}");
        assert_eq!(r.len, 32);
        assert_eq!(r.offset, f.data_offset + r.index * 32);
        assert_eq!(plan.file_path(r.source, r.file), f.path);
        assert_eq!(r.position, p);
    }
    assert!(plan.try_locate(plan.total_sequences()).is_err());
}

#[test]
fn elastic_world_keeps_the_global_order() {
    let plan = Plan::new(three_sources("global", 64, 20, 1.0), three_shapes()).unwrap();
    for step in [0, 1, 7, 19] {
        let whole = plan.rank_block(step, 0, 1).unwrap();
        assert_eq!(whole.len(), 64);
        for world in [1u32, 2, 4, 8] {
            let mut joined: Vec<SequenceRef> = Vec::new();
            for rank in 0..world {
                let block = plan.rank_block(step, rank, world).unwrap();
                assert_eq!(block.len() as u64, 64 / u64::from(world));
                // Contiguous positions.
                let start = step * 64 + u64::from(rank) * 64 / u64::from(world);
                assert!(block
                    .iter()
                    .enumerate()
                    .all(|(i, r)| r.position == start + i as u64));
                joined.extend(block);
            }
            assert_eq!(joined, whole, "step {step} world {world}");
            let set: BTreeSet<_> = joined.iter().map(|r| (r.source, r.file, r.index)).collect();
            let want: BTreeSet<_> = whole.iter().map(|r| (r.source, r.file, r.index)).collect();
            assert_eq!(set, want);
        }
    }
}

#[test]
fn resume_equals_continuing() {
    for mode in ["global", "stratified"] {
        let plan = Plan::new(three_sources(mode, 48, 30, 1.0), three_shapes()).unwrap();
        let straight: Vec<(u64, Vec<SequenceRef>)> = plan.cursor(1, 4, 0).unwrap().collect();
        assert_eq!(straight.len(), 30);
        for k in [0u64, 1, 13, 29, 30] {
            // A fresh plan from the same config and data, as after a restart.
            let again = Plan::new(three_sources(mode, 48, 30, 1.0), three_shapes()).unwrap();
            let resumed: Vec<_> = again.cursor(1, 4, k).unwrap().collect();
            assert_eq!(
                resumed,
                straight[k as usize..].to_vec(),
                "{mode} resume at {k}"
            );
        }
        // Resume with another world size: step 13's union is unchanged.
        let again = Plan::new(three_sources(mode, 48, 30, 1.0), three_shapes()).unwrap();
        let w2: Vec<SequenceRef> = (0..2)
            .flat_map(|r| again.rank_block(13, r, 2).unwrap())
            .collect();
        assert_eq!(w2, plan.step_block(13).unwrap());
        assert!(plan.cursor(0, 4, 31).is_err());
    }
}

#[test]
fn seeds_change_the_order_and_plans_are_deterministic() {
    let a = Plan::new(three_sources("global", 64, 10, 1.0), three_shapes()).unwrap();
    let b = Plan::new(three_sources("global", 64, 10, 1.0), three_shapes()).unwrap();
    assert_eq!(a.step_block(3).unwrap(), b.step_block(3).unwrap());
    assert_eq!(a.fingerprint(), b.fingerprint());
    let mut cfg = three_sources("global", 64, 10, 1.0);
    cfg.seed += 1;
    let c = Plan::new(cfg, three_shapes()).unwrap();
    assert_ne!(a.step_block(3).unwrap(), c.step_block(3).unwrap());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn fingerprint_refuses_changed_data_naming_the_source() {
    let plan = Plan::new(three_sources("global", 64, 10, 1.0), three_shapes()).unwrap();
    plan.check_fingerprints(&three_shapes()).unwrap();

    let mut changed = three_shapes();
    changed[1].fingerprint = "fp-code-v2".into();
    let text = err_text(plan.check_fingerprints(&changed).unwrap_err());
    assert!(
        text.contains("'code'") && text.contains("fp-code") && text.contains("fp-code-v2"),
        "{text}"
    );
    assert!(!text.contains("'web'"));

    let mut grown = three_shapes();
    grown[2].files[0].count += 1;
    let text = err_text(plan.check_fingerprints(&grown).unwrap_err());
    assert!(text.contains("'books'"), "{text}");

    let missing: Vec<SourceShape> = three_shapes()
        .into_iter()
        .filter(|s| s.name != "web")
        .collect();
    let text = err_text(plan.check_fingerprints(&missing).unwrap_err());
    assert!(text.contains("'web'") && text.contains("missing"), "{text}");

    // The plan fingerprint covers the data.
    let other = Plan::new(three_sources("global", 64, 10, 1.0), changed.clone()).unwrap();
    assert_ne!(other.fingerprint(), plan.fingerprint());

    // A config pinned to the data refuses other data when the plan is built.
    let mut pinned = three_sources("global", 64, 10, 1.0);
    pinned.pin(&three_shapes()).unwrap();
    let text = pinned.to_toml_string().unwrap();
    let reparsed = PlanConfig::from_toml_str(&text).unwrap();
    assert_eq!(reparsed, pinned);
    Plan::new(reparsed.clone(), three_shapes()).unwrap();
    let text = err_text(Plan::new(reparsed, changed).unwrap_err());
    assert!(
        text.contains("'code'") && text.contains("changed"),
        "{text}"
    );
}

#[test]
fn run_length_variants() {
    let base = |run: &str| {
        config(&format!(
            "seed = 1\nglobal_batch = 8\n[run]\n{run}\n[[sources]]\nname = \"web\"\nweight = 1\n"
        ))
    };
    let shapes = vec![shape("web", &[100_000])];
    let p = Plan::new(base("sequences = 17"), shapes.clone()).unwrap();
    assert_eq!(
        (p.requested_sequences(), p.total_sequences(), p.steps()),
        (17, 24, 3)
    );
    // seq_len 16: 16*16 + 1 tokens -> 17 sequences -> 3 steps.
    let p = Plan::new(base("tokens = 257"), shapes.clone()).unwrap();
    assert_eq!((p.requested_sequences(), p.steps()), (17, 3));
    let p = Plan::new(base("steps = 5"), shapes.clone()).unwrap();
    assert_eq!((p.total_sequences(), p.steps()), (40, 5));
    for zero in ["sequences = 0", "tokens = 0", "steps = 0"] {
        let text = err_text(Plan::new(base(zero), shapes.clone()).unwrap_err());
        assert!(text.contains("zero-length run"), "{text}");
    }
    let text = err_text(Plan::new(base("steps = 5\nsequences = 3"), shapes.clone()).unwrap_err());
    assert!(text.contains("exactly one"), "{text}");
    let text = err_text(Plan::new(base(""), shapes).unwrap_err());
    assert!(text.contains("exactly one"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let shapes = three_shapes();
    let with_source = |extra: &str| {
        format!(
            "seed = 1\nglobal_batch = 8\n[run]\nsteps = 2\n[[sources]]\nname = \"web\"\n{extra}\n"
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            &with_source("weight = 0"),
            "weight must be positive (got 0)",
        ),
        (
            &with_source("weight = -1.5"),
            "weight must be positive (got -1.5)",
        ),
        (&with_source("weight = nan"), "weight is NaN"),
        (&with_source("weight = inf"), "must be finite"),
        (&with_source(""), "missing weight"),
        (
            &with_source("weight = 1\nmax_epochs = 0"),
            "repetition limit",
        ),
        (
            &with_source("weight = 1\nwieght = 2"),
            "unknown field `wieght`",
        ),
        (
            &with_source("weight = 1").replace("global_batch = 8", "global_batch = 0"),
            "global_batch: must be at least 1",
        ),
        (
            &with_source("weight = 1").replace("seed = 1", "seed = 1\nshuffle = true"),
            "unknown field `shuffle`",
        ),
        (
            &with_source("weight = 1").replace("steps = 2", "steps = 2\nepochs = 3"),
            "unknown field `epochs`",
        ),
        (
            &with_source("weight = 1").replace("\"web\"", "\"webb\""),
            "unknown source 'webb'",
        ),
        (
            &with_source("weight = 1").replace("global", "globall"),
            "unknown field `globall_batch`",
        ),
        (
            &with_source("weight = 1\nmode = \"sometimes\""),
            "unknown field `mode`",
        ),
        (
            &with_source("weight = 1").replace("seed = 1", "seed = 1\nmode = \"sometimes\""),
            "unknown variant `sometimes`",
        ),
        (&with_source("weight = \"high\""), "invalid type"),
        (
            "seed = 1\nglobal_batch = 8\nsources = []\n[run]\nsteps = 2\n",
            "no sources",
        ),
        (
            &(with_source("weight = 1") + "[[sources]]\nname = \"web\"\nweight = 2\n"),
            "listed twice",
        ),
    ];
    for (text, want) in cases {
        let got = match PlanConfig::from_toml_str(text) {
            Err(e) => err_text(e),
            Ok(cfg) => match Plan::new(cfg, shapes.clone()) {
                Err(e) => err_text(e),
                Ok(_) => panic!("accepted:\n{text}"),
            },
        };
        assert!(
            got.contains(want),
            "want {want:?}, got {got:?} for:\n{text}"
        );
    }
    // A source smaller than one sequence.
    let cfg = PlanConfig::from_toml_str(&with_source("weight = 1")).unwrap();
    let text = err_text(Plan::new(cfg.clone(), vec![shape("web", &[0, 0])]).unwrap_err());
    assert!(
        text.contains("'web'") && text.contains("smaller than one sequence"),
        "{text}"
    );
    let text = err_text(Plan::new(cfg, vec![shape("web", &[])]).unwrap_err());
    assert!(text.contains("smaller than one sequence"), "{text}");
}

#[test]
fn rank_and_step_errors() {
    let plan = Plan::new(three_sources("global", 48, 5, 1.0), three_shapes()).unwrap();
    let text = err_text(plan.rank_block(0, 0, 5).unwrap_err());
    assert!(
        text.contains("not divisible") && text.contains("48 % 5 = 3"),
        "{text}"
    );
    assert!(err_text(plan.rank_block(0, 4, 4).unwrap_err()).contains("rank must be below"));
    assert!(err_text(plan.rank_block(0, 0, 0).unwrap_err()).contains("at least 1"));
    let text = err_text(plan.rank_block(5, 0, 1).unwrap_err());
    assert!(
        text.contains("step 5") && text.contains("5 steps"),
        "{text}"
    );
}

#[test]
fn byte_ranges_that_overflow_are_refused() {
    let mut shapes = three_shapes();
    shapes[2].files[1].data_offset = u64::MAX - 10;
    let text = err_text(Plan::new(three_sources("global", 8, 2, 1.0), shapes).unwrap_err());
    assert!(
        text.contains("'books'")
            && text.contains("books/part-00001.seq")
            && text.contains("overflows"),
        "{text}"
    );
}

#[test]
fn mismatched_sequence_shapes_are_refused() {
    let mut shapes = three_shapes();
    shapes[1].seq_len = 32;
    let text = err_text(Plan::new(three_sources("global", 8, 2, 1.0), shapes).unwrap_err());
    assert!(
        text.contains("'code'") && text.contains("seq_len 32"),
        "{text}"
    );
}

#[test]
fn shapes_file_round_trips() {
    let file = ShapesFile {
        fingerprint: None,
        sources: three_shapes(),
    };
    let text = file.to_toml_string().unwrap();
    assert_eq!(ShapesFile::from_toml_str(&text).unwrap(), file);
    let bad = text.replacen("count", "cnt", 1);
    assert!(ShapesFile::from_toml_str(&bad)
        .unwrap_err()
        .to_string()
        .contains("cnt"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Any valid mixture: quotas sum to the run, every position maps to a
    /// distinct draw below its source's quota, every draw resolves inside
    /// its file, and each full epoch of a source is a permutation of it.
    #[test]
    fn any_mixture_is_exact(
        weights in proptest::collection::vec(0.01f64..10.0, 1..5),
        sizes in proptest::collection::vec(1u64..300, 5),
        b in 1u64..40,
        steps in 1u64..40,
        stratified in proptest::bool::ANY,
        seed in proptest::prelude::any::<u64>(),
    ) {
        let mut text = format!(
            "seed = {}\nglobal_batch = {b}\nmode = \"{}\"\nmax_epochs = 1e9\n[run]\nsteps = {steps}\n",
            seed >> 1,
            if stratified { "stratified" } else { "global" }
        );
        let mut shapes = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            text += &format!("[[sources]]\nname = \"s{i}\"\nweight = {w:?}\n");
            let n = sizes[i];
            shapes.push(shape(&format!("s{i}"), &[n / 3, 0, n - n / 3]));
        }
        let plan = Plan::new(config(&text), shapes.clone()).unwrap();
        let total = plan.total_sequences();
        proptest::prop_assert_eq!(total, b * steps);
        let quotas: Vec<u64> = plan.sources().iter().map(|s| s.quota).collect();
        proptest::prop_assert_eq!(quotas.iter().sum::<u64>(), total);
        let mut seen: Vec<Vec<bool>> = quotas.iter().map(|&q| vec![false; q as usize]).collect();
        for p in 0..total {
            let (s, k) = plan.draw(p);
            proptest::prop_assert!(k < quotas[s as usize]);
            proptest::prop_assert!(!seen[s as usize][k as usize]);
            seen[s as usize][k as usize] = true;
            let r = plan.locate(p);
            let f = &shapes[r.source as usize].files[r.file as usize];
            proptest::prop_assert!(r.index < f.count);
            proptest::prop_assert_eq!(r.offset, f.data_offset + r.index * 32);
        }
        for (i, s) in plan.sources().iter().enumerate() {
            for e in 0..s.quota / s.size {
                let mut idx: Vec<u64> = (0..s.size).map(|j| plan.source_index(i as u32, e * s.size + j)).collect();
                idx.sort_unstable();
                proptest::prop_assert_eq!(idx, (0..s.size).collect::<Vec<_>>());
            }
        }
    }
}
