//! Unit tests of the cluster reader against in-process flaky nodes.

use super::*;
use crate::block::BlockSource;
use crate::testutil::{expected, files, flaky_node, RandomBlocks, Switch};
use std::sync::atomic::Ordering;

fn quick() -> RetryPolicy {
    RetryPolicy {
        start_attempts: 2,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        failover_timeout: Duration::from_millis(300),
    }
}

#[test]
fn partial_placement_reads_every_row_in_place() {
    let f = files(7, 20, 256, 1);
    // File i on node i % 2; file 6 on both.
    let on = |n: usize| -> Vec<String> {
        f.names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == n || *i == 6)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let (a, _) = flaky_node(f.dir.path(), "a", on(0));
    let (b, _) = flaky_node(f.dir.path(), "b", on(1));
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    let src = RandomBlocks::new(&f, 32, 10);
    let mut staged = 0;
    for step in 0..10 {
        let mut reads = Vec::new();
        src.block(step, 0, 1, &mut reads).unwrap();
        let mut dst = vec![0u8; 32 * 256];
        let st = r.read_step(step, &reads, 256, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads), "step {step}");
        assert_eq!(st.rows, 32);
        assert_eq!(st.bytes, 32 * 256);
        assert_eq!(st.failed_over, 0);
        staged += st.staged_rows;
    }
    assert!(staged > 0, "scattered rows should go through staging");
    let per = r.bytes_per_node();
    assert_eq!(per.iter().sum::<u64>(), 10 * 32 * 256);
    assert!(per.iter().all(|&b| b > 0), "{per:?}");
}

#[test]
fn full_replication_gives_one_run_per_node() {
    let f = files(3, 10, 64, 2);
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, sb) = flaky_node(f.dir.path(), "b", f.names.clone());
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    // Exact batch counts: no CRC header fetches (these bare files have no table).
    r.set_verify_crc(false);
    let src = RandomBlocks::new(&f, 16, 4);
    let mut reads = Vec::new();
    src.block(0, 0, 1, &mut reads).unwrap();
    let mut dst = vec![0u8; 16 * 64];
    let st = r.read_step(0, &reads, 64, &mut dst).unwrap();
    assert_eq!(dst, expected(&f, &reads));
    assert_eq!(st.batches, 2);
    assert_eq!(st.staged_rows, 0);
    assert_eq!(sa.batches.load(Ordering::SeqCst), 1);
    assert_eq!(sb.batches.load(Ordering::SeqCst), 1);
    assert_eq!(r.bytes_per_node(), vec![8 * 64, 8 * 64]);
}

#[test]
fn node_failure_moves_rows_to_replica_and_node_comes_back() {
    let f = files(4, 16, 128, 3);
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, _sb) = flaky_node(f.dir.path(), "b", f.names.clone());
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    let src = RandomBlocks::new(&f, 8, 100);
    let mut dst = vec![0u8; 8 * 128];
    let mut reads = Vec::new();
    src.block(0, 0, 1, &mut reads).unwrap();
    r.read_step(0, &reads, 128, &mut dst).unwrap();
    sa.down.store(true, Ordering::SeqCst);
    reads.clear();
    src.block(1, 0, 1, &mut reads).unwrap();
    dst.fill(0);
    let st = r.read_step(1, &reads, 128, &mut dst).unwrap();
    assert_eq!(dst, expected(&f, &reads));
    assert_eq!(st.failed_over, 4, "node a's half moved to b");
    assert_eq!(r.live_nodes(), vec![false, true]);
    // While a is down, b serves everything.
    for step in 2..5 {
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        let st = r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        assert_eq!(st.failed_over, 0);
    }
    // a comes back: reconnected after its backoff, serves again.
    sa.down.store(false, Ordering::SeqCst);
    let served = sa.batches.load(Ordering::SeqCst);
    let t = Instant::now();
    let mut step = 5;
    while r.live_nodes() != vec![true, true] {
        assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
        std::thread::sleep(Duration::from_millis(5));
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        step += 1;
    }
    reads.clear();
    src.block(step, 0, 1, &mut reads).unwrap();
    r.read_step(step, &reads, 128, &mut dst).unwrap();
    assert!(sa.batches.load(Ordering::SeqCst) > served);
}

#[test]
fn registered_destination_is_registered_again_after_reconnect() {
    let f = files(4, 16, 128, 9);
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, sb) = flaky_node(f.dir.path(), "b", f.names.clone());
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    // Every batch into registered memory: no CRC header fetches (bare files).
    r.set_verify_crc(false);
    let src = RandomBlocks::new(&f, 8, 100);
    let mut dst = vec![0u8; 8 * 128];
    r.register_buffer(&mut dst);
    let regs = |s: &Switch| s.registers.load(Ordering::SeqCst);
    assert_eq!((regs(&sa), regs(&sb)), (1, 1));
    let mut reads = Vec::new();
    let mut step = 0;
    let mut read = |r: &mut ClusterReader, dst: &mut Vec<u8>| {
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        r.read_step(step, &reads, 128, dst).unwrap();
        assert_eq!(*dst, expected(&f, &reads));
        step += 1;
    };
    read(&mut r, &mut dst);
    assert_eq!(sa.misses.load(Ordering::SeqCst), 0);
    sa.down.store(true, Ordering::SeqCst);
    read(&mut r, &mut dst);
    sa.down.store(false, Ordering::SeqCst);
    let t = Instant::now();
    while r.live_nodes() != vec![true, true] {
        assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
        std::thread::sleep(Duration::from_millis(5));
        read(&mut r, &mut dst);
    }
    // The reconnected transport registers the buffer the next time it is the destination.
    let misses = sa.misses.load(Ordering::SeqCst);
    read(&mut r, &mut dst);
    read(&mut r, &mut dst);
    assert_eq!(regs(&sa), 2, "registered once per transport");
    assert_eq!(sa.misses.load(Ordering::SeqCst), misses);
    assert_eq!(sa.overlaps.load(Ordering::SeqCst), 0);
    // Withdrawn: every transport drops it, later batches register per batch.
    r.unregister_buffer(dst.as_ptr() as usize, dst.len());
    assert_eq!(sb.unregisters.load(Ordering::SeqCst), 1);
    let before = sb.misses.load(Ordering::SeqCst);
    read(&mut r, &mut dst);
    assert!(sb.misses.load(Ordering::SeqCst) > before);
}

#[test]
fn no_replica_fails_in_bounded_time_naming_step_file_and_node() {
    let f = files(2, 8, 64, 4);
    let (a, sa) = flaky_node(f.dir.path(), "node-a", vec![f.names[0].clone()]);
    let (b, _) = flaky_node(f.dir.path(), "node-b", vec![f.names[1].clone()]);
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    let src = RandomBlocks::new(&f, 8, 10);
    let mut reads = Vec::new();
    src.block(3, 0, 1, &mut reads).unwrap();
    assert!(reads.iter().any(|x| x.file == 0));
    sa.down.store(true, Ordering::SeqCst);
    let mut dst = vec![0u8; 8 * 64];
    let t = Instant::now();
    let e = r.read_step(3, &reads, 64, &mut dst).unwrap_err();
    let el = t.elapsed();
    assert!(
        el >= Duration::from_millis(250) && el < Duration::from_secs(3),
        "{el:?}"
    );
    let msg = e.to_string();
    assert!(matches!(e, LoaderError::NoReplica { step: 3, .. }), "{msg}");
    assert!(msg.contains("node-a") && msg.contains(&f.names[0]), "{msg}");
    // Reconnects were attempted with backoff, not in a tight loop.
    let c = sa.connects.load(Ordering::SeqCst);
    assert!((2..=40).contains(&c), "{c} connects");
}

#[test]
fn unreachable_at_start_is_a_clear_error_after_retries() {
    let f = files(1, 4, 64, 5);
    let (a, sa) = flaky_node(f.dir.path(), "10.0.0.1:1", f.names.clone());
    sa.down.store(true, Ordering::SeqCst);
    let mut p = quick();
    p.start_attempts = 3;
    let e = ClusterReader::connect(f.names.clone(), vec![a], p).unwrap_err();
    assert!(matches!(e, LoaderError::Connect { attempts: 3, .. }), "{e}");
    assert!(e.to_string().contains("10.0.0.1:1"), "{e}");
    assert_eq!(sa.connects.load(Ordering::SeqCst), 3);
}

#[test]
fn unreachable_node_without_a_file_list_reports_its_connect_error() {
    // A single `--node` has no file list: its holdings are only known
    // once connected, so "no node holds file" would hide the real cause.
    let f = files(1, 4, 64, 5);
    let (mut a, sa) = flaky_node(f.dir.path(), "10.0.0.1:1", f.names.clone());
    a.files = None;
    sa.down.store(true, Ordering::SeqCst);
    let mut p = quick();
    p.start_attempts = 2;
    let e = ClusterReader::connect(f.names.clone(), vec![a], p).unwrap_err();
    assert!(matches!(e, LoaderError::Connect { attempts: 2, .. }), "{e}");
    assert!(e.to_string().contains("10.0.0.1:1"), "{e}");
}

#[test]
fn one_node_down_at_start_with_a_replica_is_tolerated() {
    let f = files(2, 4, 64, 6);
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
    sa.down.store(true, Ordering::SeqCst);
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    assert_eq!(r.live_nodes(), vec![false, true]);
    let src = RandomBlocks::new(&f, 4, 1);
    let mut reads = Vec::new();
    src.block(0, 0, 1, &mut reads).unwrap();
    let mut dst = vec![0u8; 4 * 64];
    r.read_step(0, &reads, 64, &mut dst).unwrap();
    assert_eq!(dst, expected(&f, &reads));
}

#[test]
fn out_of_bounds_is_not_failed_over() {
    let f = files(1, 4, 64, 7);
    let (a, _) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    let bad = [SeqRead {
        file: 0,
        offset: 4 * 64 - 10,
        len: 64,
        source: 0,
        position: 0,
    }];
    let mut dst = vec![0u8; 64];
    let e = r.read_step(9, &bad, 64, &mut dst).unwrap_err();
    assert!(matches!(e, LoaderError::Read { step: 9, .. }), "{e}");
    assert_eq!(r.live_nodes(), vec![true, true]);
    let too_long = [SeqRead { len: 65, ..bad[0] }];
    assert!(matches!(
        r.read_step(9, &too_long, 64, &mut dst),
        Err(LoaderError::BadRow {
            step: 9,
            row: 0,
            ..
        })
    ));
}

#[test]
fn missing_region_and_unplaced_files_are_refused() {
    let f = files(2, 4, 64, 8);
    let (mut a, _) = flaky_node(f.dir.path(), "a", vec![f.names[0].clone()]);
    a.files = Some(f.names.clone()); // claims a file its table lacks
    let e = ClusterReader::connect(f.names.clone(), vec![a], quick()).unwrap_err();
    assert!(matches!(e, LoaderError::MissingRegion { .. }), "{e}");
    let (a, _) = flaky_node(f.dir.path(), "a", vec![f.names[0].clone()]);
    let e = ClusterReader::connect(f.names.clone(), vec![a], quick()).unwrap_err();
    assert!(matches!(e, LoaderError::Unplaced { .. }), "{e}");
    assert!(e.to_string().contains(&f.names[1]));
}

/// Issue 12 item 7: a frozen node (a stopped process: connects and reads
/// block for the io timeout, then fail with EAGAIN) costs a run one io
/// timeout, not one per reconnect attempt: reconnects run in the background
/// while the replica serves every row.
#[test]
fn frozen_node_costs_one_io_timeout_and_its_rows_move_to_the_replica() {
    const FROZEN_MS: u64 = 400;
    let f = files(4, 16, 128, 11);
    let (a, sa) = flaky_node(f.dir.path(), "node-a", f.names.clone());
    let (b, _sb) = flaky_node(f.dir.path(), "node-b", f.names.clone());
    let mut p = quick();
    p.failover_timeout = Duration::from_secs(3);
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], p).unwrap();
    let src = RandomBlocks::new(&f, 8, 100);
    let mut dst = vec![0u8; 8 * 128];
    let mut reads = Vec::new();
    src.block(0, 0, 1, &mut reads).unwrap();
    r.read_step(0, &reads, 128, &mut dst).unwrap();
    sa.frozen_ms.store(FROZEN_MS, Ordering::SeqCst);
    let t = Instant::now();
    let mut moved = 0;
    for step in 1..30 {
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        dst.fill(0);
        let st = r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads), "step {step}");
        moved += st.failed_over;
    }
    let el = t.elapsed();
    // One frozen read (FROZEN_MS), then the replica alone; before the fix
    // every step paid a reconnect attempt of FROZEN_MS on its own path.
    assert!(
        el < Duration::from_millis(FROZEN_MS + 350),
        "29 steps took {el:?} with a frozen node"
    );
    assert_eq!(moved, 4, "node-a's half of one step moved to node-b");
    assert_eq!(r.live_nodes(), vec![false, true]);
    // Thawed, the node is probed back in and serves again.
    sa.frozen_ms.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let mut step = 30;
    while r.live_nodes() != vec![true, true] {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "node-a never came back"
        );
        std::thread::sleep(Duration::from_millis(5));
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        step += 1;
    }
}

/// With one replica, a frozen node's error says "timed out" (not `os error
/// 11`) and names the node, the step and what was being read.
#[test]
fn frozen_node_without_replica_says_timed_out_naming_node_and_file() {
    let f = files(1, 8, 64, 12);
    let (a, sa) = flaky_node(f.dir.path(), "node-a", f.names.clone());
    let mut p = quick();
    p.failover_timeout = Duration::from_millis(500);
    let mut r = ClusterReader::connect(f.names.clone(), vec![a], p).unwrap();
    let src = RandomBlocks::new(&f, 4, 10);
    let mut reads = Vec::new();
    src.block(2, 0, 1, &mut reads).unwrap();
    sa.frozen_ms.store(200, Ordering::SeqCst);
    let mut dst = vec![0u8; 4 * 64];
    let t = Instant::now();
    let e = r.read_step(2, &reads, 64, &mut dst).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let msg = e.to_string();
    assert!(matches!(e, LoaderError::NoReplica { step: 2, .. }), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    assert!(!msg.contains("os error 11"), "{msg}");
    assert!(msg.contains("node-a"), "{msg}");
    assert!(
        msg.contains(&format!("reading step 2: 4 rows of {}", f.names[0])),
        "{msg}"
    );
}

/// One packed source (u32 sequences of 64 tokens, with CRC tables) written
/// twice, as the disks of two nodes; returns both roots, the files, and one
/// step that reads every sequence of every file in order (with its bytes).
fn packed_copies() -> (
    tempfile::TempDir,
    tempfile::TempDir,
    Vec<String>,
    Vec<SeqRead>,
    Vec<u8>,
) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    seqfeed_format::write_synthetic_source(
        a.path().join("web"),
        "web",
        seqfeed_format::Dtype::U32,
        64,
        40,
        7,
        256 * 16 + 8192,
    )
    .unwrap();
    std::fs::create_dir_all(b.path().join("web")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(a.path().join("web"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(a.path().join("web").join(n), b.path().join("web").join(n)).unwrap();
    }
    let files: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".seq"))
        .map(|n| format!("web/{n}"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    let (mut reads, mut bytes) = (Vec::new(), Vec::new());
    for (fi, f) in files.iter().enumerate() {
        let sf = seqfeed_format::SeqFile::open(a.path().join(f)).unwrap();
        assert!(sf.has_crc());
        for i in 0..sf.count() {
            reads.push(SeqRead {
                file: fi as u32,
                offset: sf.sequence_offset(i),
                len: sf.seq_bytes() as u32,
                source: 0,
                position: reads.len() as u64,
            });
            bytes.extend_from_slice(sf.sequence_bytes(i).unwrap());
        }
    }
    (a, b, files, reads, bytes)
}

/// Flips one byte of sequence `seq` of `file` under `root`, in place (same length).
fn damage(root: &std::path::Path, file: &str, seq: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let at = seqfeed_format::SeqFile::open(root.join(file))
        .unwrap()
        .sequence_offset(seq)
        + 5;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join(file))
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

/// Issue 12 item 9: a file changed in place on one of two replicas is
/// caught by the CRC32C check, the damaged rows come from the other
/// replica byte for byte, and the damaged copy is not read again.
#[test]
fn damaged_copy_on_one_replica_is_caught_and_read_from_the_other() {
    let (da, db, files, reads, want) = packed_copies();
    let last = files.last().unwrap().clone();
    let count = seqfeed_format::SeqFile::open(da.path().join(&last))
        .unwrap()
        .count();
    // The last rows go to node-b (the second share of the step).
    damage(db.path(), &last, count - 1);
    let (a, _) = flaky_node(da.path(), "node-a", files.clone());
    let (b, sb) = flaky_node(db.path(), "node-b", files.clone());
    let mut r = ClusterReader::connect(files.clone(), vec![a, b], quick()).unwrap();
    assert!(!r.verify_crc(), "off by default");
    r.set_verify_crc(true);
    let row = 256;
    let mut dst = vec![0u8; reads.len() * row];
    let st = r.read_step(0, &reads, row, &mut dst).unwrap();
    assert_eq!(dst, want);
    assert_eq!(st.crc_mismatches, 1);
    assert_eq!(r.crc_mismatches_per_node(), vec![0, 1]);
    // The stats name the node, the file and the sequence.
    let ns = r.node_stats();
    assert_eq!((ns[0].crc_mismatches, ns[1].crc_mismatches), (0, 1));
    let named = format!("{last} sequence {}", count - 1);
    assert_eq!(ns[1].last_crc_mismatch.as_deref(), Some(named.as_str()));
    assert_eq!(ns[1].name, "node-b");
    assert_eq!(
        r.live_nodes(),
        vec![true, true],
        "the node stays in use for other files"
    );
    // Later steps: the damaged file only from node-a, the rest from both.
    let served = sb.batches.load(Ordering::SeqCst);
    for step in 1..4 {
        dst.fill(0);
        let st = r.read_step(step, &reads, row, &mut dst).unwrap();
        assert_eq!(dst, want, "step {step}");
        assert_eq!(st.crc_mismatches, 0);
        assert_eq!(st.failed_over, 0);
    }
    assert!(sb.batches.load(Ordering::SeqCst) > served);
    // Without the check the damaged byte is served silently (the switch works).
    let (b, _) = flaky_node(db.path(), "node-b", files.clone());
    let mut r = ClusterReader::connect(files.clone(), vec![b], quick()).unwrap();
    r.set_verify_crc(false);
    r.read_step(0, &reads, row, &mut dst).unwrap();
    assert_ne!(dst, want);
    assert_eq!(r.crc_mismatches_per_node(), vec![0]);
}

/// With no intact replica, the step fails at once naming the node, the
/// file and the sequence.
#[test]
fn damaged_copy_without_replica_is_an_error_naming_node_file_and_sequence() {
    let (_da, db, files, reads, _) = packed_copies();
    damage(db.path(), &files[0], 2);
    let (b, _) = flaky_node(db.path(), "node-b", files.clone());
    let mut p = quick();
    p.failover_timeout = Duration::from_secs(5);
    let mut r = ClusterReader::connect(files.clone(), vec![b], p).unwrap();
    r.set_verify_crc(true);
    let mut dst = vec![0u8; reads.len() * 256];
    let t = Instant::now();
    let e = r.read_step(4, &reads, 256, &mut dst).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        t.elapsed()
    );
    let msg = e.to_string();
    assert!(matches!(e, LoaderError::Corrupt { step: 4, .. }), "{msg}");
    assert!(msg.contains("node-b"), "{msg}");
    assert!(msg.contains(&files[0]), "{msg}");
    assert!(msg.contains("sequence 2 of"), "{msg}");
    assert!(msg.contains("CRC32C"), "{msg}");
}

/// Issue 12 item 10: per-node counters add up to what was read, and count
/// a failure by kind, the rows it moved, and the reconnect.
#[test]
fn node_stats_count_bytes_rows_batches_errors_and_latency() {
    let f = files(4, 16, 128, 13);
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
    let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
    r.set_verify_crc(false); // exact batch counts (no table fetches)
    let src = RandomBlocks::new(&f, 8, 100);
    let mut dst = vec![0u8; 8 * 128];
    let mut reads = Vec::new();
    let mut read = |r: &mut ClusterReader, step: u64| {
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        let st = r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        st
    };
    for step in 0..5 {
        read(&mut r, step);
    }
    sa.down.store(true, Ordering::SeqCst);
    let st = read(&mut r, 5);
    assert_eq!(st.failed_over, 4);
    let ns = r.node_stats();
    assert_eq!(ns.len(), 2);
    assert_eq!((ns[0].name.as_str(), ns[1].name.as_str()), ("a", "b"));
    assert!(!ns[0].live && ns[1].live);
    // 6 steps of 8 rows: a read 4 rows in each of the first 5; b the rest.
    assert_eq!((ns[0].reads, ns[1].reads), (20, 28));
    assert_eq!((ns[0].bytes, ns[1].bytes), (20 * 128, 28 * 128));
    assert_eq!(ns[0].batches, 6, "5 good batches and the failed one");
    assert_eq!(ns[1].batches, 7, "one per step, and the moved rows");
    assert_eq!(ns[0].errors.connection, 1);
    assert_eq!(ns[0].errors.total(), 1);
    assert_eq!(ns[1].errors.total(), 0);
    assert_eq!((ns[0].failed_over, ns[1].failed_over), (4, 0));
    assert_eq!(ns[0].latency.count, 6);
    assert_eq!(ns[1].latency.count, 7);
    assert!(ns[1].latency.quantile(0.99).is_some());
    // Back up: counted as a reconnect.
    sa.down.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let mut step = 6;
    while !r.node_stats()[0].live {
        assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
        std::thread::sleep(Duration::from_millis(5));
        read(&mut r, step);
        step += 1;
    }
    assert_eq!(r.node_stats()[0].reconnects, 1);
}

/// Item 6 of issue 10: a round's other nodes are read on persistent
/// workers, the same threads every round (none started per round), and the
/// bytes stay exact.
#[test]
fn round_workers_are_started_once_and_reused() {
    let f = files(3, 10, 64, 3);
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| flaky_node(f.dir.path(), n, f.names.clone()).0)
        .collect();
    let mut r = ClusterReader::connect(f.names.clone(), nodes, quick()).unwrap();
    assert!(r.workers.is_none(), "no workers before the first round");
    let src = RandomBlocks::new(&f, 24, 8);
    let ids = |r: &ClusterReader| {
        let mut v: Vec<String> = r
            .workers
            .as_ref()
            .expect("workers started")
            .broadcast(|_| format!("{:?}", std::thread::current().id()));
        v.sort();
        v
    };
    let mut first = None;
    for step in 0..8 {
        let mut reads = Vec::new();
        src.block(step, 0, 1, &mut reads).unwrap();
        let mut dst = vec![0u8; 24 * 64];
        r.read_step(step, &reads, 64, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads), "step {step}");
        let now = ids(&r);
        assert_eq!(now.len(), 2, "two workers for three nodes");
        assert_eq!(
            first.get_or_insert_with(|| now.clone()),
            &now,
            "step {step}"
        );
    }
    let per = r.bytes_per_node();
    assert!(per.iter().all(|&b| b > 0), "every node read: {per:?}");
}

/// Issue 16 item 6: probes back off from `backoff_initial`, doubling, up
/// to `backoff_max`, and stay there however many fail (no give-up, no
/// overflow).
#[test]
fn probe_backoff_doubles_up_to_the_cap_and_stays_there() {
    let p = RetryPolicy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let ms = |f| revive::backoff(&p, f).as_millis();
    assert_eq!(
        (ms(0), ms(1), ms(2), ms(6), ms(7)),
        (50, 50, 100, 1600, 2000)
    );
    assert_eq!((ms(1000), ms(u32::MAX)), (2000, 2000));
}
