//! The node served over real loopback sockets, checked byte for byte
//! against the local reference transport.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;

use rand::SeedableRng;
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::{
    ControlClient, LocalTransport, ReadRequest, RegionId, TcpTransport, Transport, TransportError,
};
use seqfeed_wire::{Frame, Limits, QpEndpoint, VerbsAccept, VerbsConnect};

fn config(root: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::new(root, "127.0.0.1:0".parse().unwrap());
    c.node_name = "node-a".into();
    c
}

#[test]
fn tcp_matches_local_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = Node::start(config(dir.path())).unwrap();
    let ds = seqfeed_format::Dataset::open(dir.path()).unwrap();
    assert_eq!(node.fingerprint(), ds.fingerprint());
    let all: Vec<String> = ds.all_files().into_iter().map(|f| f.2).collect();
    assert!(all.len() >= 6, "{all:?}");
    let mut local = LocalTransport::open(dir.path(), &all).unwrap();
    assert_eq!(node.regions(), local.regions());

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut total_bytes = 0u64;
    let mut total_reads = 0u64;
    // Connections driven by one thread (pipelined) and by several threads.
    for (conns, threads) in [(1, 0), (4, 1), (4, 2), (3, 3)] {
        let mut o = common::opts(conns);
        o.receive_threads = threads;
        o.expected_fingerprint = Some(ds.fingerprint().to_owned());
        let mut tcp = TcpTransport::connect(node.local_addr(), &o).unwrap();
        assert_eq!(tcp.backend(), "tcp");
        assert_eq!(tcp.regions(), local.regions());
        assert!(tcp.node().contains("node-a"), "{}", tcp.node());
        for (n, max_len) in [(0, 1), (1, 10), (50, 20_000), (300, 16_384), (40, 400_000)] {
            let (reads, len) = common::random_batch(&mut rng, local.regions(), n, max_len);
            // Gaps between reads keep their old contents on both sides.
            let mut want = vec![0x5au8; len];
            local.read_batch(&reads, &mut want).unwrap();
            let mut got = vec![0x5au8; len];
            let st = tcp.read_batch(&reads, &mut got).unwrap();
            assert_eq!(got, want, "conns {conns} threads {threads} n {n}");
            let bytes: u64 = reads.iter().map(|r| u64::from(r.len)).sum();
            assert_eq!(st.bytes, bytes);
            assert_eq!(st.reads, n as u64);
            total_bytes += bytes;
            total_reads += reads.iter().filter(|r| r.len > 0).count() as u64;
        }
    }
    let stats = node.stats();
    assert_eq!(stats.node.bytes, total_bytes);
    assert_eq!(stats.node.reads, total_reads);
    assert_eq!(stats.node.connections_total, 12);
    assert_eq!(stats.node.errors, 0);
    assert_eq!(stats.node.refused, 0);
    node.shutdown();
}

/// Thread ids (`/proc/self/task`) of this process whose name starts with
/// `prefix`, sorted.
fn threads_named(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn tcp_receive_workers_start_at_connect_persist_and_stop_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = Node::start(config(dir.path())).unwrap();
    // The workers are named after the node's port: only this test's.
    let prefix = format!("sf-rx{}-", node.local_addr().port());
    let mut o = common::opts(4);
    o.receive_threads = 1;
    let single = TcpTransport::connect(node.local_addr(), &o).unwrap();
    assert_eq!(single.receive_workers(), 0);
    assert!(threads_named(&prefix).is_empty());
    drop(single);

    o.receive_threads = 3;
    let mut tcp = TcpTransport::connect(node.local_addr(), &o).unwrap();
    assert_eq!(tcp.receive_workers(), 2);
    // The pool's threads name themselves once they run, which can be just
    // after connect returns: wait (bounded) for both.
    let started = std::time::Instant::now();
    let workers = loop {
        let w = threads_named(&prefix);
        if w.len() >= 2 || started.elapsed() > std::time::Duration::from_secs(5) {
            break w;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(workers.len(), 2, "{workers:?}");
    let files: Vec<String> = tcp.regions().iter().map(|r| r.name.clone()).collect();
    let mut local = LocalTransport::open(dir.path(), &files).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for batch in 0..6 {
        // Megabytes per batch: all four connections carry a run.
        let (reads, len) = common::random_batch(&mut rng, local.regions(), 300, 16_384);
        let mut want = vec![0u8; len];
        local.read_batch(&reads, &mut want).unwrap();
        let mut got = vec![0u8; len];
        tcp.read_batch(&reads, &mut got).unwrap();
        assert_eq!(got, want, "batch {batch}");
        // The same threads, none started for the batch.
        assert_eq!(threads_named(&prefix), workers, "batch {batch}");
    }
    drop(tcp);
    let dropped = std::time::Instant::now();
    while !threads_named(&prefix).is_empty() {
        assert!(
            dropped.elapsed() < std::time::Duration::from_secs(5),
            "receive workers still running after drop: {:?}",
            threads_named(&prefix)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn small_limits_split_batches_into_many_frames() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = Node::start(config(dir.path())).unwrap();
    let mut o = common::opts(2);
    o.limits = Limits {
        max_frame: 1 << 20,
        max_reads: 7,
        max_batch_bytes: 50_000,
    };
    let mut tcp = TcpTransport::connect(node.local_addr(), &o).unwrap();
    let files: Vec<String> = tcp.regions().iter().map(|r| r.name.clone()).collect();
    let mut local = LocalTransport::open(dir.path(), &files).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Reads up to 120 KB: bigger than a frame's byte limit, so split.
    let (reads, len) = common::random_batch(&mut rng, local.regions(), 200, 120_000);
    let mut want = vec![0u8; len];
    local.read_batch(&reads, &mut want).unwrap();
    let mut got = vec![0u8; len];
    let st = tcp.read_batch(&reads, &mut got).unwrap();
    assert_eq!(got, want);
    let bytes: u64 = reads.iter().map(|r| u64::from(r.len)).sum();
    assert!(st.posts >= bytes / 50_000 && st.posts >= 200 / 7, "{st:?}");
    assert_eq!(node.stats().node.batches, st.posts);
}

#[test]
fn files_subset_health_stats_and_verbs_default() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = config(dir.path());
    cfg.files = Some(vec![
        "web/part-00001.seq".into(),
        "code/part-00000.seq".into(),
    ]);
    let node = Node::start(cfg).unwrap();
    let names: Vec<&str> = node.regions().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["code/part-00000.seq", "web/part-00001.seq"]);

    let mut c = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    assert_eq!(c.welcome().regions.len(), 2);
    let mut tcp = TcpTransport::connect(node.local_addr(), &common::opts(1)).unwrap();
    let mut dst = vec![0u8; 100];
    tcp.read_batch(
        &[ReadRequest {
            region: RegionId(1),
            offset: 4096,
            len: 100,
            dst_offset: 0,
        }],
        &mut dst,
    )
    .unwrap();
    let h = c.health().unwrap();
    assert_eq!(h.node.batches, 1);
    assert_eq!(h.node.bytes, 100);
    assert_eq!(h.node.connections_open, 2);
    assert_eq!(h.you.client, "test-client");
    assert_eq!(h.you.bytes, 0);
    let s = c.stats().unwrap();
    assert_eq!(s.clients.len(), 2);
    assert_eq!(s.clients.iter().map(|c| c.bytes).sum::<u64>(), 100);

    // Verbs requests get a clear error and the connection stays usable.
    let e = c
        .request(&Frame::VerbsConnect(VerbsConnect {
            qps: vec![],
            device: "rxe0".into(),
            rail: 0,
            replaces: vec![],
        }))
        .unwrap_err();
    assert!(e.to_string().contains("verbs not enabled"), "{e}");
    assert!(c.health().is_ok());

    // A file outside the dataset is refused at start.
    let mut bad = config(dir.path());
    bad.files = Some(vec!["web/nope.seq".into()]);
    let e = Node::start(bad).unwrap_err();
    assert!(e.to_string().contains("web/nope.seq"), "{e}");
    // Overlapping destinations are refused (they would race between
    // connections).
    let two = |dst_offset| ReadRequest {
        region: RegionId(0),
        offset: 0,
        len: 10,
        dst_offset,
    };
    let e = tcp.read_batch(&[two(0), two(5)], &mut dst).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    tcp.read_batch(&[two(0), two(10)], &mut dst).unwrap();
    // A region table larger than a frame is refused at start.
    let mut tight = config(dir.path());
    tight.limits.max_frame = 200;
    let e = Node::start(tight).unwrap_err();
    assert!(e.to_string().contains("frame limit"), "{e}");
    // Out-of-bounds reads are refused client-side, before any I/O.
    let e = tcp
        .read_batch(
            &[ReadRequest {
                region: RegionId(0),
                offset: u64::MAX - 1,
                len: 10,
                dst_offset: 0,
            }],
            &mut dst,
        )
        .unwrap_err();
    assert!(matches!(e, TransportError::OutOfBounds { .. }), "{e}");
}

struct FakeVerbs;

impl seqfeed_node::VerbsAcceptor for FakeVerbs {
    fn disconnected(&self, _id: seqfeed_node::ClientId) {}

    fn accept(
        &self,
        _id: seqfeed_node::ClientId,
        client: &str,
        req: &VerbsConnect,
        _limits: &seqfeed_node::QpLimits,
    ) -> Result<VerbsAccept, String> {
        if req.qps.is_empty() {
            return Err(format!("{client} asked for no queue pairs"));
        }
        Ok(VerbsAccept {
            qps: req
                .qps
                .iter()
                .map(|q| QpEndpoint {
                    qp_num: q.qp_num + 1000,
                    ..*q
                })
                .collect(),
            regions: vec![],
        })
    }
}

#[test]
fn verbs_acceptor_plugs_in() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = config(dir.path());
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen2 = Arc::clone(&seen);
    cfg.verbs = Some(Arc::new(
        move |table: &Arc<seqfeed_transport::RegionTable>| {
            seen2.store(table.len(), std::sync::atomic::Ordering::SeqCst);
            Ok(Arc::new(FakeVerbs) as Arc<dyn seqfeed_node::VerbsAcceptor>)
        },
    ));
    let node = Node::start(cfg).unwrap();
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        node.regions().len()
    );
    let mut c = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let qp = QpEndpoint {
        qp_num: 5,
        psn: 1,
        gid: [1; 16],
        lid: 0,
        mtu: 3,
        rd_atomic: 4,
    };
    let r = c
        .request(&Frame::VerbsConnect(VerbsConnect {
            qps: vec![qp],
            device: "rxe0".into(),
            rail: 0,
            replaces: vec![],
        }))
        .unwrap();
    assert!(
        matches!(r, Frame::VerbsAccept(a) if a.qps[0].qp_num == 1005 && a.qps[0].rd_atomic == 4)
    );
    let e = c
        .request(&Frame::VerbsConnect(VerbsConnect {
            qps: vec![],
            device: "rxe0".into(),
            rail: 0,
            replaces: vec![],
        }))
        .unwrap_err();
    assert!(e.to_string().contains("asked for no queue pairs"), "{e}");
}
