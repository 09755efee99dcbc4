//! The loopback integration over RDMA verbs: real storage nodes with verbs
//! enabled, four ranks whose loaders read over `TransportKind::Verbs`
//! (RC queue pairs striped over every RDMA device of the host), every batch
//! compared byte for byte with direct file reads and with the plan; then a
//! node shut down mid-run with the replica taking over.
//!
//! Needs an RDMA device (soft-RoCE rxe in the VM harness `scripts/rxe/run.sh
//! test`, or real hardware). Without one each test prints why and returns,
//! unless `SEQFEED_REQUIRE_RDMA=1` (set by the harness), where it fails.

use std::path::Path;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use seqfeed_loader::{node_spec_with, ClusterReader, Endpoint, TransportKind};
use seqfeed_node::{verbs_factory, Node, NodeConfig, NodeHandle};
use seqfeed_tests::{
    addrs, assert_union_is_global_batch, corpus, place, quick_retry, run_rank, tcp_options, Corpus,
    NodeAddr, RankRun,
};

fn rdma_or_skip(test: &str) -> bool {
    match seqfeed_verbs::probe() {
        seqfeed_verbs::Selection::Verbs { devices } => {
            eprintln!("{test}: RDMA devices {devices:?}");
            true
        }
        seqfeed_verbs::Selection::Tcp { reason } => {
            if std::env::var("SEQFEED_REQUIRE_RDMA").is_ok_and(|v| v == "1") {
                panic!("{test}: SEQFEED_REQUIRE_RDMA=1 but no usable RDMA device: {reason}");
            }
            eprintln!(
                "SKIPPED {test}: no usable RDMA device ({reason}); run scripts/rxe/run.sh test"
            );
            false
        }
    }
}

fn start_verbs_nodes(root: &Path, placement: &[Vec<String>]) -> Vec<NodeHandle> {
    placement
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let mut cfg = NodeConfig::new(root, "127.0.0.1:0".parse().expect("addr"));
            cfg.files = Some(files.clone());
            cfg.node_name = format!("node-{i}");
            cfg.worker_threads = 2;
            cfg.verbs = Some(verbs_factory(None));
            Node::start(cfg).expect("start node with verbs")
        })
        .collect()
}

fn verbs_reader(c: &Corpus, nodes: &[NodeAddr]) -> ClusterReader {
    let opts = tcp_options(&c.fingerprint);
    let specs = nodes
        .iter()
        .map(|n| {
            node_spec_with(
                TransportKind::Verbs,
                &Endpoint::remote(&n.name, &n.addr, Some(n.files.clone())),
                &opts,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("specs");
    ClusterReader::connect(c.files(), specs, quick_retry()).expect("connect over verbs")
}

fn ranks(c: &Corpus, na: &[NodeAddr], hook: &(dyn Fn(usize, u64) + Sync)) -> Vec<RankRun> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|rank| {
                s.spawn(move || {
                    let reader = verbs_reader(c, na);
                    run_rank(c, reader, rank, 4, 0, &|step| hook(rank, step))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

#[test]
fn verbs_two_nodes_four_ranks_every_byte_checked() {
    if !rdma_or_skip("verbs_two_nodes_four_ranks_every_byte_checked") {
        return;
    }
    // 4096-token u32 sequences: 16 KiB per row, the benchmark's message size.
    let c = corpus(4096, 32, 8);
    let placement = place(&c.files(), 2, 1);
    let nodes = start_verbs_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    let t = Instant::now();
    let runs = ranks(&c, &na, &|_, _| {});
    for (rank, r) in runs.iter().enumerate() {
        assert_eq!(r.error, None, "rank {rank}");
        assert_eq!(r.steps, (0..8).collect::<Vec<_>>(), "rank {rank}");
        assert_eq!(r.stats.sequences, 8 * 8, "rank {rank}");
        assert!(r.checked > 0, "rank {rank}");
        assert_eq!(r.stats.failed_over, 0);
    }
    assert_union_is_global_batch(&c.plan, &runs, 0..8);
    // Over verbs the nodes' tcp data path served nothing: every byte came by RDMA READ.
    let served: u64 = nodes.iter().map(|n| n.stats().node.bytes).sum();
    assert_eq!(served, 0, "tcp data path used: {served} bytes");
    eprintln!(
        "4 ranks x 8 steps over verbs, {} bytes checked, {:.2}s",
        runs.iter().map(|r| r.checked).sum::<u64>(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn verbs_replica_takes_over_when_a_node_shuts_down() {
    if !rdma_or_skip("verbs_replica_takes_over_when_a_node_shuts_down") {
        return;
    }
    let c = corpus(1024, 32, 10);
    let placement = place(&c.files(), 2, 2);
    let nodes = Mutex::new(start_verbs_nodes(c.root(), &placement));
    let na = addrs(&nodes.lock().unwrap(), &placement);
    let barrier = Barrier::new(4);
    let t = Instant::now();
    let runs = ranks(&c, &na, &|rank, step| {
        if step == 3 {
            barrier.wait();
            if rank == 0 {
                let n = nodes.lock().unwrap().remove(0);
                n.shutdown();
            }
            barrier.wait();
        }
    });
    for (rank, r) in runs.iter().enumerate() {
        assert_eq!(r.error, None, "rank {rank}");
        assert_eq!(r.steps, (0..10).collect::<Vec<_>>(), "rank {rank}");
        assert!(
            r.stats.failed_over > 0,
            "rank {rank}: nothing moved to the replica"
        );
    }
    assert_union_is_global_batch(&c.plan, &runs, 0..10);
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
}

fn auto_reader(c: &Corpus, nodes: &[NodeAddr]) -> ClusterReader {
    let opts = tcp_options(&c.fingerprint);
    let specs = nodes
        .iter()
        .map(|n| {
            node_spec_with(
                TransportKind::Auto,
                &Endpoint::remote(&n.name, &n.addr, Some(n.files.clone())),
                &opts,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("specs");
    ClusterReader::connect(c.files(), specs, quick_retry()).expect("connect (auto)")
}

#[test]
fn auto_uses_verbs_and_falls_back_to_tcp_for_a_node_without_verbs() {
    if !rdma_or_skip("auto_uses_verbs_and_falls_back_to_tcp_for_a_node_without_verbs") {
        return;
    }
    let c = corpus(1024, 16, 4);
    let placement = place(&c.files(), 2, 1);
    // Node 0 with verbs, node 1 without: auto reads node 0 by RDMA, node 1 over tcp.
    let mut nodes = start_verbs_nodes(c.root(), &placement[..1]);
    nodes.extend(seqfeed_tests::start_nodes(c.root(), &placement[1..]));
    let na = addrs(&nodes, &placement);
    let run = run_rank(&c, auto_reader(&c, &na), 0, 1, 0, &|_| {});
    assert_eq!(run.error, None);
    assert_eq!(run.steps, (0..4).collect::<Vec<_>>());
    let served: Vec<u64> = nodes.iter().map(|n| n.stats().node.bytes).collect();
    assert_eq!(served[0], 0, "the verbs node served over tcp: {served:?}");
    assert!(
        served[1] > 0,
        "the node without verbs served nothing: {served:?}"
    );
}
