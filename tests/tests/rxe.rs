//! The loopback integration over RDMA verbs: real storage nodes with verbs
//! enabled, four ranks whose loaders read over `TransportKind::Verbs`
//! (RC queue pairs striped over every RDMA device of the host), every batch
//! compared byte for byte with direct file reads and with the plan; then a
//! node shut down mid-run with the replica taking over; and the GPUDirect
//! read path of the loader with simulated device memory (host memory offered
//! as a peer-memory region), plus its fallback when a node cannot write it.
//!
//! Needs an RDMA device (soft-RoCE rxe in the VM harness `scripts/rxe/run.sh
//! test`, or real hardware). Without one each test prints why and returns,
//! unless `SEQFEED_REQUIRE_RDMA=1` (set by the harness), where it fails.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use seqfeed_loader::{
    node_spec_with, BlockSource, BoxError, BufferAllocator, ClusterReader, DeviceRegion, Endpoint,
    HostBuffer, Loader, LoaderConfig, TransportKind,
};
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

/// "Device memory" for the GPUDirect path without a GPU: a second host
/// allocation offered to the transports as a peer-memory region (rxe's
/// `ibv_reg_mr` takes any valid address). The host path (`filled`) copies
/// the host bytes into it, as the CUDA bounce copy does.
struct SimDevice {
    host: Vec<u8>,
    dev: Vec<u8>,
    dev_addr: u64,
}

impl HostBuffer for SimDevice {
    fn bytes(&self) -> &[u8] {
        &self.host
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.host
    }
    fn filled(&mut self, len: usize) -> Result<(), BoxError> {
        self.dev[..len].copy_from_slice(&self.host[..len]);
        Ok(())
    }
    fn device_regions(&self) -> Vec<DeviceRegion> {
        vec![DeviceRegion {
            addr: self.dev_addr,
            len: self.dev.len(),
            dmabuf: None,
        }]
    }
    fn filled_device(&mut self, _len: usize) -> Result<(), BoxError> {
        Ok(())
    }
    fn backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

struct SimDeviceAlloc;

impl BufferAllocator for SimDeviceAlloc {
    fn name(&self) -> &str {
        "sim-device"
    }
    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError> {
        let mut dev = vec![0u8; len];
        let dev_addr = dev.as_mut_ptr() as u64;
        Ok(Box::new(SimDevice {
            host: vec![0u8; len],
            dev,
            dev_addr,
        }))
    }
}

/// Runs one rank with simulated device buffers; checks every row of the
/// "device" memory against the files. Returns (steps, direct steps).
fn run_sim_device(c: &Corpus, reader: ClusterReader) -> (u64, u64) {
    let row_bytes = c.source.seq_bytes();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let config = LoaderConfig::new(0, 1).retry(quick_retry());
    let mut loader =
        Loader::with_allocator(config, c.source.clone(), reader, Arc::new(SimDeviceAlloc))
            .expect("loader");
    let mut steps = 0;
    while let Some(b) = loader.next() {
        let b = b.expect("batch");
        let sim = b
            .buffer()
            .and_then(|x| x.backend())
            .and_then(|x| x.downcast_ref::<SimDevice>())
            .expect("a sim-device buffer");
        for (k, r) in b.reads().iter().enumerate() {
            let file = files
                .entry(b.file(k).to_string())
                .or_insert_with(|| std::fs::read(c.root().join(b.file(k))).expect("file"));
            let want = &file[r.offset as usize..(r.offset + u64::from(r.len)) as usize];
            let got = &sim.dev[k * row_bytes..k * row_bytes + r.len as usize];
            assert!(
                got == want,
                "step {} row {k} differs in device memory",
                b.step()
            );
        }
        assert_eq!(b.bytes().is_empty(), b.filled_directly());
        steps += 1;
    }
    (steps, loader.stats().direct_steps)
}

#[test]
fn verbs_gpudirect_loader_reads_steps_straight_into_registered_device_memory() {
    if !rdma_or_skip("verbs_gpudirect_loader_reads_steps_straight_into_registered_device_memory") {
        return;
    }
    let c = corpus(2048, 16, 6);
    let placement = place(&c.files(), 2, 1);
    let nodes = start_verbs_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    let (steps, direct) = run_sim_device(&c, verbs_reader(&c, &na));
    assert_eq!(
        (steps, direct),
        (6, 6),
        "every step by RDMA into device memory"
    );
    let served: u64 = nodes.iter().map(|n| n.stats().node.bytes).sum();
    assert_eq!(served, 0, "tcp data path used: {served} bytes");
}

#[test]
fn gpudirect_refused_by_a_tcp_node_falls_back_to_the_host_path() {
    if !rdma_or_skip("gpudirect_refused_by_a_tcp_node_falls_back_to_the_host_path") {
        return;
    }
    let c = corpus(1024, 16, 4);
    let placement = place(&c.files(), 2, 1);
    // Node 0 with verbs, node 1 without: auto reads node 1 over tcp, which cannot
    // write device memory, so the device registration is refused (all or none).
    let mut nodes = start_verbs_nodes(c.root(), &placement[..1]);
    nodes.extend(seqfeed_tests::start_nodes(c.root(), &placement[1..]));
    let na = addrs(&nodes, &placement);
    let (steps, direct) = run_sim_device(&c, auto_reader(&c, &na));
    assert_eq!((steps, direct), (4, 0), "every step through host memory");
}
