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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_loader::{
    BlockSource, BoxError, BufferAllocator, ClusterReader, DeviceRegion, HostBuffer, Loader,
    LoaderConfig, TransportKind,
};
use seqfeed_node::{verbs_factory, NodeHandle};
use seqfeed_tests::{
    addrs, assert_failed_over, assert_union_is_global_batch, corpus, place, quick_retry, reader,
    run_rank, run_ranks, run_ranks_with_a_kill, start_nodes, start_nodes_with, Corpus, NodeAddr,
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
    start_nodes_with(root, placement, &|cfg| {
        cfg.verbs = Some(verbs_factory(None))
    })
}

/// Two verbs nodes over `c`, each file on `replicas` of them; the nodes and
/// their addresses.
fn verbs_cluster(c: &Corpus, replicas: usize) -> (Vec<NodeHandle>, Vec<NodeAddr>) {
    let placement = place(&c.files(), 2, replicas);
    let nodes = start_verbs_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    (nodes, na)
}

/// Two nodes over `c`, node 0 with verbs and node 1 without; the nodes and
/// their addresses.
fn verbs_and_tcp_nodes(c: &Corpus) -> (Vec<NodeHandle>, Vec<NodeAddr>) {
    let placement = place(&c.files(), 2, 1);
    let mut nodes = start_verbs_nodes(c.root(), &placement[..1]);
    nodes.extend(start_nodes(c.root(), &placement[1..]));
    let na = addrs(&nodes, &placement);
    (nodes, na)
}

fn verbs_reader(c: &Corpus, nodes: &[NodeAddr]) -> ClusterReader {
    reader(c, nodes, TransportKind::Verbs, quick_retry()).expect("connect over verbs")
}

fn auto_reader(c: &Corpus, nodes: &[NodeAddr]) -> ClusterReader {
    reader(c, nodes, TransportKind::Auto, quick_retry()).expect("connect (auto)")
}

#[test]
fn verbs_two_nodes_four_ranks_every_byte_checked() {
    if !rdma_or_skip("verbs_two_nodes_four_ranks_every_byte_checked") {
        return;
    }
    // 4096-token u32 sequences: 16 KiB per row, the benchmark's message size.
    let c = corpus(4096, 32, 8);
    let (nodes, na) = verbs_cluster(&c, 1);
    let t = Instant::now();
    let runs = run_ranks(&c, 4, &|| verbs_reader(&c, &na), &|_, _| {});
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
    let (nodes, na) = verbs_cluster(&c, 2);
    let nodes = Mutex::new(nodes);
    let t = Instant::now();
    let runs = run_ranks_with_a_kill(&c, 4, 3, &|| verbs_reader(&c, &na), &|| {
        let n = nodes.lock().unwrap().remove(0);
        n.shutdown();
    });
    assert_failed_over(&c.plan, &runs, 10);
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
}

#[test]
fn auto_uses_verbs_and_falls_back_to_tcp_for_a_node_without_verbs() {
    if !rdma_or_skip("auto_uses_verbs_and_falls_back_to_tcp_for_a_node_without_verbs") {
        return;
    }
    let c = corpus(1024, 16, 4);
    // Node 0 with verbs, node 1 without: auto reads node 0 by RDMA, node 1 over tcp.
    let (nodes, na) = verbs_and_tcp_nodes(&c);
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
        // SAFETY: `dev_addr` is the heap buffer of `self.dev` (taken with
        // `as_mut_ptr`), which this buffer owns and never reallocates; the
        // loader drops its reader (every transport, so every registration)
        // before the ring's buffers; the test reads `dev` only after a step
        // has arrived, never during a read into it.
        vec![unsafe { DeviceRegion::new(self.dev_addr, self.dev.len(), None) }]
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
    // SAFETY: the only device regions registered in this test process are
    // `SimDevice`s' (see `device_regions`), whose host memory outlives every
    // registration and is read only between reads; the CUDA driver check
    // would refuse them (they are host memory), which is what this hook skips.
    unsafe { seqfeed_verbs::allow_host_memory_as_device() };
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
    let (nodes, na) = verbs_cluster(&c, 1);
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
    // Node 0 with verbs, node 1 without: auto reads node 1 over tcp, which cannot
    // write device memory, so the device registration is refused (all or none).
    let (_nodes, na) = verbs_and_tcp_nodes(&c);
    let (steps, direct) = run_sim_device(&c, auto_reader(&c, &na));
    assert_eq!((steps, direct), (4, 0), "every step through host memory");
}
