//! Loopback integration: two real storage nodes on 127.0.0.1, four ranks
//! over tcp, several steps; every batch compared byte for byte with direct
//! reads of the files and with the plan, and the union of the ranks'
//! blocks per step equal to the plan's global batch.

use seqfeed_tests::{
    addrs, assert_union_is_global_batch, corpus, place, quick_retry, run_rank, start_nodes,
    tcp_reader,
};

#[test]
fn two_nodes_four_ranks_every_byte_checked() {
    let c = corpus(512, 32, 12);
    // Files split over the two nodes (no replica): every row must be routed
    // to the one node holding its file.
    let placement = place(&c.files(), 2, 1);
    let nodes = start_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    let runs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|rank| {
                let (c, na) = (&c, &na);
                s.spawn(move || {
                    let reader = tcp_reader(c, na, quick_retry()).expect("connect");
                    run_rank(c, reader, rank, 4, 0, &|_| {})
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    for (rank, r) in runs.iter().enumerate() {
        assert_eq!(r.error, None, "rank {rank}");
        assert_eq!(r.steps, (0..12).collect::<Vec<_>>(), "rank {rank}");
        assert_eq!(r.checked, 12 * 8 * 2048, "rank {rank}");
        assert_eq!(r.stats.sequences, 12 * 8);
        assert_eq!(r.stats.failed_over, 0);
    }
    assert_union_is_global_batch(&c.plan, &runs, 0..12);
    // Both nodes served, and together exactly what the ranks read.
    let served: Vec<u64> = nodes.iter().map(|n| n.stats().node.bytes).collect();
    assert!(served.iter().all(|&b| b > 0), "{served:?}");
    assert_eq!(served.iter().sum::<u64>(), 4 * 12 * 8 * 2048, "{served:?}");
}

#[test]
fn resume_at_step_n_reads_the_same_batches() {
    let c = corpus(256, 16, 10);
    let placement = place(&c.files(), 2, 2);
    let nodes = start_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    let full = run_rank(
        &c,
        tcp_reader(&c, &na, quick_retry()).unwrap(),
        1,
        2,
        0,
        &|_| {},
    );
    let resumed = run_rank(
        &c,
        tcp_reader(&c, &na, quick_retry()).unwrap(),
        1,
        2,
        6,
        &|_| {},
    );
    assert_eq!(resumed.steps, (6..10).collect::<Vec<_>>());
    assert_eq!(resumed.positions[..], full.positions[6..]);
    assert_eq!(resumed.error, None);
}
