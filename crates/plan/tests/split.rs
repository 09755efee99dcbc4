//! Train/validation splits: disjoint streams that cover each source,
//! stability when a source grows, fingerprints, bad configs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use seqfeed_plan::{FileShape, Holdout, Plan, PlanConfig, SourceShape, Split};

fn shape(name: &str, counts: &[u64]) -> SourceShape {
    SourceShape {
        name: name.to_string(),
        fingerprint: format!("fp-{name}-{counts:?}"),
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
                data_offset: 4096,
            })
            .collect(),
    }
}

fn config(text: &str) -> PlanConfig {
    PlanConfig::from_toml_str(text).unwrap()
}

/// web: the default fraction; code: its own count; books: nothing held out.
fn split_config(mode: &str, steps: u64) -> PlanConfig {
    config(&format!(
        r#"
        seed = 11
        global_batch = 32
        mode = "{mode}"
        max_epochs = 3.0
        [run]
        steps = {steps}
        [split]
        seed = 5
        holdout = 0.1
        [[sources]]
        name = "web"
        weight = 0.5
        [[sources]]
        name = "code"
        weight = 0.3
        holdout_sequences = 37
        [[sources]]
        name = "books"
        weight = 0.2
        holdout = 0.0
        "#
    ))
}

fn shapes() -> Vec<SourceShape> {
    vec![
        shape("web", &[700, 0, 600, 3]),
        shape("code", &[400, 401]),
        shape("books", &[250, 11]),
    ]
}

/// Index within the source of a resolved sequence.
fn source_index(plan: &Plan, source: u32, file: u32, index: u64) -> u64 {
    let s = &plan.sources()[source as usize];
    s.files[..file as usize]
        .iter()
        .map(|f| f.count)
        .sum::<u64>()
        + index
}

#[test]
fn streams_are_disjoint_and_cover_every_source() {
    for mode in ["global", "stratified"] {
        let plan = Plan::new(split_config(mode, 120), shapes()).unwrap();
        let s = plan.sources();
        assert_eq!(s[0].holdout, Holdout::Fraction(0.1));
        assert_eq!(s[1].holdout, Holdout::Count(37));
        assert_eq!(s[2].holdout, Holdout::Fraction(0.0));
        assert_eq!(s[1].held_out().len(), 37);
        assert!(s[2].held_out().is_empty());
        // About 10% of web (1303 sequences: mean 130, sd 11).
        let web = s[0].held_out().len() as i64;
        assert!((web - 130).abs() < 50, "{web} held out of web");

        // The validation stream: exactly the held-out sequences, sources in
        // config order, ascending within each.
        let val: Vec<(u32, u64)> = plan
            .validation_iter()
            .map(|r| (r.source, source_index(&plan, r.source, r.file, r.index)))
            .collect();
        let want: Vec<(u32, u64)> = s
            .iter()
            .enumerate()
            .flat_map(|(i, src)| src.held_out().iter().map(move |&j| (i as u32, j)))
            .collect();
        assert_eq!(val, want);
        assert_eq!(plan.validation_len(), want.len() as u64);

        // Training: over the run (2 to 3 epochs of some sources) never a
        // held-out sequence; each full epoch is exactly the kept sequences.
        let held: BTreeSet<(u32, u64)> = want.iter().copied().collect();
        for p in 0..plan.total_sequences() {
            let r = plan.locate(p);
            let key = (r.source, source_index(&plan, r.source, r.file, r.index));
            assert!(
                !held.contains(&key),
                "{mode}: position {p} reads held-out {key:?}"
            );
        }
        for (i, src) in s.iter().enumerate() {
            let t = src.train_size();
            assert_eq!(t + src.held_out().len() as u64, src.size);
            assert!(
                src.quota >= t,
                "{mode}: {} quota {} < {t}",
                src.name,
                src.quota
            );
            for e in 0..src.quota / t {
                let epoch: BTreeSet<u64> = (0..t)
                    .map(|j| plan.source_index(i as u32, e * t + j))
                    .collect();
                assert_eq!(epoch.len() as u64, t);
                let mut all = epoch.clone();
                all.extend(src.held_out());
                assert_eq!(
                    all,
                    (0..src.size).collect(),
                    "{mode}: {} epoch {e}",
                    src.name
                );
            }
        }
    }
}

#[test]
fn held_out_sequences_stay_held_out_when_a_source_grows() {
    let cfg = |holdout: &str| {
        config(&format!(
            "seed = 1\nglobal_batch = 8\n[run]\nsteps = 10\n[split]\nseed = 3\n{holdout}\n[[sources]]\nname = \"web\"\nweight = 1\n"
        ))
    };
    let small = Plan::new(cfg("holdout = 0.05"), vec![shape("web", &[5000])]).unwrap();
    // Grow the last file and append two files.
    let grown = Plan::new(
        cfg("holdout = 0.05"),
        vec![shape("web", &[6000, 4000, 123])],
    )
    .unwrap();
    let before = small.sources()[0].held_out();
    let after = grown.sources()[0].held_out();
    let after_old: Vec<u64> = after.iter().copied().filter(|&j| j < 5000).collect();
    assert_eq!(
        before,
        &after_old[..],
        "the fraction form is stable under growth"
    );
    assert!(after.len() > before.len());
    // Another plan seed (another training run) holds out the same sequences.
    let mut other = cfg("holdout = 0.05");
    other.seed = 99;
    let other = Plan::new(other, vec![shape("web", &[5000])]).unwrap();
    assert_eq!(other.sources()[0].held_out(), before);
    // The split seed chooses another set.
    let reseeded = Plan::new(
        config("seed = 1\nglobal_batch = 8\n[run]\nsteps = 10\n[split]\nseed = 4\nholdout = 0.05\n[[sources]]\nname = \"web\"\nweight = 1\n"),
        vec![shape("web", &[5000])],
    )
    .unwrap();
    assert_ne!(reseeded.sources()[0].held_out(), before);

    // The count form: the smallest hashes; after growth it holds out the
    // same count, keeping those old sequences that still rank among them.
    let small = Plan::new(cfg("holdout_sequences = 50"), vec![shape("web", &[5000])]).unwrap();
    let grown = Plan::new(cfg("holdout_sequences = 50"), vec![shape("web", &[5100])]).unwrap();
    let (a, b) = (small.sources()[0].held_out(), grown.sources()[0].held_out());
    assert_eq!((a.len(), b.len()), (50, 50));
    let new = b.iter().filter(|&&j| j >= 5000).count();
    let kept = b.iter().filter(|&&j| j < 5000 && a.contains(&j)).count();
    assert_eq!(kept + new, 50, "only appended sequences displace old ones");
}

#[test]
fn fingerprints_cover_the_split_and_plans_without_one_are_unchanged() {
    let shape1 = |name: &str, n: u64| SourceShape {
        name: name.into(),
        fingerprint: format!("fp-{name}"),
        seq_len: 16,
        token_bytes: 2,
        tokenizer: None,
        special_tokens: Default::default(),
        files: vec![FileShape {
            path: format!("{name}/part-00000.seq"),
            count: n,
            data_offset: 4096,
        }],
    };
    let base = "seed = 5\nglobal_batch = 16\n[run]\nsteps = 20\n";
    let sources =
        "[[sources]]\nname = \"web\"\nweight = 0.7\n[[sources]]\nname = \"code\"\nweight = 0.3\n";
    let fp = |extra: &str| {
        Plan::new(
            config(&format!("{base}{extra}{sources}")),
            vec![shape1("web", 1000), shape1("code", 500)],
        )
        .unwrap()
        .fingerprint()
        .to_string()
    };
    // Pinned before splits existed (commit 3d4d3d1).
    assert_eq!(
        fp(""),
        "97a0645d46dd6812c4862c8fdc93b0e9e9c89f8fa548ae41c86c51c62c1c0925"
    );
    let variants = [
        fp(""),
        fp("[split]\n"),
        fp("[split]\nholdout = 0.01\n"),
        fp("[split]\nholdout = 0.02\n"),
        fp("[split]\nseed = 1\nholdout = 0.02\n"),
        fp("[split]\nholdout_sequences = 10\n"),
        fp("[split]\nholdout_sequences = 11\n"),
    ];
    let distinct: BTreeSet<&String> = variants.iter().collect();
    assert_eq!(distinct.len(), variants.len(), "{variants:#?}");
}

#[test]
fn bad_split_configs_name_the_source() {
    let text = |split: &str, code: &str| {
        format!(
            "seed = 1\nglobal_batch = 8\n[run]\nsteps = 4\n{split}\n[[sources]]\nname = \"web\"\nweight = 1\n[[sources]]\nname = \"code\"\nweight = 1\n{code}\n"
        )
    };
    let err = |split: &str, code: &str| -> String {
        match PlanConfig::from_toml_str(&text(split, code)) {
            Err(e) => e.to_string(),
            Ok(c) => Plan::new(c, vec![shape("web", &[100]), shape("code", &[40])])
                .unwrap_err()
                .to_string(),
        }
    };
    for f in ["1.0", "1.5", "-0.1", "nan", "inf"] {
        let e = err("", &format!("holdout = {f}"));
        assert!(e.contains("'code'") && e.contains("[0, 1)"), "{f}: {e}");
        let e = err(&format!("[split]\nholdout = {f}"), "");
        assert!(
            e.contains("split.holdout") && e.contains("[0, 1)"),
            "{f}: {e}"
        );
    }
    let e = err("", "holdout_sequences = 41");
    assert!(
        e.contains("'code'") && e.contains("41") && e.contains("40"),
        "{e}"
    );
    let e = err("", "holdout_sequences = 40");
    assert!(
        e.contains("'code'") && e.contains("nothing would be left"),
        "{e}"
    );
    let e = err("[split]\nholdout_sequences = 60", "");
    assert!(e.contains("'code'") && e.contains("60"), "{e}");
    let e = err("", "holdout = 0.1\nholdout_sequences = 3");
    assert!(e.contains("'code'") && e.contains("not both"), "{e}");
    let e = err("[split]\nholdout = 0.1\nholdout_sequences = 3", "");
    assert!(e.contains("split") && e.contains("not both"), "{e}");
    let e = err("[split]\nfraction = 0.1", "");
    assert!(e.contains("fraction"), "{e}");
    // A fraction just below 1 of a tiny source can take every sequence.
    let e = err("", "holdout = 0.9999999");
    assert!(e.contains("'code'") && e.contains("all 40"), "{e}");
    // Nothing held out: the validation stream is an error, not empty.
    let plan = Plan::new(
        PlanConfig::from_toml_str(&text("", "")).unwrap(),
        vec![shape("web", &[100]), shape("code", &[40])],
    )
    .unwrap();
    assert_eq!(plan.validation_len(), 0);
    let e = plan
        .split_block(Split::Validation, 0, 0, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds out no sequences"), "{e}");
}

#[test]
fn validation_blocks_split_the_stream_over_ranks_in_order() {
    let plan = Plan::new(split_config("global", 20), shapes()).unwrap();
    let v = plan.validation_len();
    let steps = plan.split_steps(Split::Validation);
    assert_eq!(steps, v.div_ceil(32));
    assert!(v % 32 != 0, "the test wants a short last step ({v})");
    let all: Vec<_> = plan.validation_iter().collect();
    for world in [1u32, 2, 4, 8] {
        let mut cat = Vec::new();
        for step in 0..steps {
            for rank in 0..world {
                let block = plan
                    .split_block(Split::Validation, step, rank, world)
                    .unwrap();
                let want = plan
                    .split_range(Split::Validation, step, rank, world)
                    .unwrap();
                assert_eq!(block.len() as u64, want.end - want.start);
                cat.extend(block);
            }
        }
        assert_eq!(cat, all, "world {world}");
        assert!(plan
            .split_block(Split::Validation, steps, 0, world)
            .is_err());
    }
    // The training stream through the same call is the rank block.
    assert_eq!(
        plan.split_block(Split::Train, 3, 1, 4).unwrap(),
        plan.rank_block(3, 1, 4).unwrap()
    );
}

#[test]
fn split_configs_round_trip_through_toml() {
    let cfg = split_config("global", 10);
    let text = cfg.to_toml_string().unwrap();
    assert_eq!(PlanConfig::from_toml_str(&text).unwrap(), cfg);
    let mut pinned = cfg.clone();
    pinned.pin(&shapes()).unwrap();
    let again = PlanConfig::from_toml_str(&pinned.to_toml_string().unwrap()).unwrap();
    assert_eq!(
        Plan::new(again, shapes()).unwrap().fingerprint(),
        Plan::new(cfg, shapes()).unwrap().fingerprint()
    );
}
