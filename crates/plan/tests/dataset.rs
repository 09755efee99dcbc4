//! A plan over a real packed dataset: every planned (file, offset, len)
//! holds exactly the bytes of the sequence the plan names.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom};

use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
use seqfeed_plan::{shapes_from_dataset, Plan, PlanConfig};

#[test]
fn planned_offsets_hold_the_named_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    std::fs::create_dir(&root).unwrap();
    // Small files (a few sequences each) so positions cross many files.
    write_synthetic_source(
        root.join("web"),
        "web",
        Dtype::U16,
        32,
        300,
        11,
        4096 + 64 * 9,
    )
    .unwrap();
    write_synthetic_source(
        root.join("code"),
        "code",
        Dtype::U16,
        32,
        120,
        12,
        4096 + 64 * 5,
    )
    .unwrap();
    let ds = Dataset::open(&root).unwrap();
    let shapes = shapes_from_dataset(&ds).unwrap();
    assert!(shapes.iter().all(|s| s.files.len() > 10));

    let config = PlanConfig::from_toml_str(
        r#"
        seed = 3
        global_batch = 16
        max_epochs = 2.0
        [run]
        steps = 30
        [[sources]]
        name = "web"
        weight = 0.6
        [[sources]]
        name = "code"
        weight = 0.4
        "#,
    )
    .unwrap();
    let plan = Plan::new(config, shapes.clone()).unwrap();
    assert_eq!(plan.seq_bytes(), 64);
    plan.check_fingerprints(&shapes).unwrap();

    let mut buf = [0u8; 64];
    for p in 0..plan.total_sequences() {
        let r = plan.locate(p);
        let name = &plan.sources()[r.source as usize].name;
        let src = ds.source(name).unwrap();
        let si = ds.source_index(name).unwrap();
        assert_eq!(
            plan.file_path(r.source, r.file),
            ds.file_path(si, r.file as usize)
        );
        let global = src.file_starts()[r.file as usize] + r.index;
        let want = src.sequence_bytes(global).unwrap();
        let mut f = std::fs::File::open(root.join(plan.file_path(r.source, r.file))).unwrap();
        f.seek(SeekFrom::Start(r.offset)).unwrap();
        f.read_exact(&mut buf[..r.len as usize]).unwrap();
        assert_eq!(&buf[..], want, "position {p}: {r:?}");
    }

    // Repacking a source with other content changes its fingerprint: refused.
    std::fs::remove_dir_all(root.join("code")).unwrap();
    write_synthetic_source(
        root.join("code"),
        "code",
        Dtype::U16,
        32,
        120,
        99,
        4096 + 64 * 5,
    )
    .unwrap();
    let changed = shapes_from_dataset(&Dataset::open(&root).unwrap()).unwrap();
    let e = plan.check_fingerprints(&changed).unwrap_err().to_string();
    assert!(e.contains("'code'") && e.contains("changed"), "{e}");
}
