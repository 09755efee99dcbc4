//! GPU check for seqfeed's CUDA destinations (run by scripts/gpu-check.sh).
//!
//! Builds a dataset of random sequence files, then for each path into device
//! memory (pinned bounce via the loader over the `local` and `tcp`
//! transports):
//! 1. checks every step's bytes on the device against the files (copy back
//!    and compare), and
//! 2. measures GB/s into device memory, printed as a ratio to a plain
//!    `cuMemcpyHtoD` of the same bytes from pageable memory, measured in the
//!    same run (a pinned `cuMemcpyHtoD` is printed as the ceiling).
//!
//! Also reports the probe, the path decision for tcp and for a
//! dmabuf-capable RDMA transport, a dmabuf export of device memory, and the
//! NVRTC widening kernel against the host reference, and checks slot reuse
//! (`tests/common/release_checks.rs`): batches held across the ring stay
//! intact while the loader moves on, and a released slot's next copy or
//! direct fill waits for the consumer stream's work.
//!
//! Without CUDA it prints why and exits 0 (2 with `--require`). Exits 1 on
//! any byte mismatch.
//!
//! Scale: `SEQFEED_GPU_CHECK_STEPS` (default 64 steps of 32 MiB),
//! `SEQFEED_GPU_CHECK_FILE_MB` (default 128 MiB per file, 8 files).

#![allow(clippy::unwrap_used)]

use seqfeed_cuda::{
    choose_path, device_batch, gpu_side, probe, CudaBounceAllocator, CudaProbe, CudaStepBuffer,
    DType, Device, DeviceBuffer, TransportCaps, Widener,
};
use seqfeed_loader::testutil::{self, xorshift_files, RandomBlocks};
use seqfeed_loader::{
    node_spec_with, BlockSource, BufferAllocator, ClusterReader, Dtype, Endpoint, HeapAllocator,
    Loader, LoaderConfig, RetryPolicy, TransportKind,
};
use seqfeed_transport::tcp::ConnectOptions;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/release_checks.rs"]
mod release_checks;

const SEQ_LEN: usize = 4096; // u16 tokens: 8 KiB rows
const ROWS: usize = 4096; // rows per step: 32 MiB steps
const FILES: usize = 8;
const STEP_BYTES: usize = ROWS * SEQ_LEN * 2;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Data {
    dir: tempfile::TempDir,
    names: Vec<String>,
    blocks: Arc<RandomBlocks>,
    /// Expected bytes of every step (pageable host memory).
    expected: Vec<Vec<u8>>,
}

fn make_data(steps: u64, file_mb: usize) -> Data {
    let f = xorshift_files(FILES, (file_mb << 20) / (SEQ_LEN * 2), SEQ_LEN * 2);
    let blocks = Arc::new(RandomBlocks::xorshift(&f, ROWS, steps));
    let mut expected = Vec::new();
    let mut rows = Vec::new();
    for s in 0..steps {
        rows.clear();
        blocks.block(s, 0, 1, &mut rows).unwrap();
        expected.push(testutil::expected(&f, &rows));
    }
    Data {
        dir: f.dir,
        names: f.names,
        blocks,
        expected,
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

fn ratio_line(name: &str, ours: f64, reference: f64, reference_name: &str) {
    println!(
        "{name:<44} {:>7.3}x of {reference_name}   ({ours:.2} GB/s vs {reference:.2} GB/s)",
        ours / reference.max(1e-12)
    );
}

/// Plain synchronous cuMemcpyHtoD of every step's bytes; best of 3 passes.
fn reference_htod(dst: &DeviceBuffer, steps: &[&[u8]]) -> f64 {
    let bytes: u64 = steps.iter().map(|s| s.len() as u64).sum();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for s in steps {
            dst.copy_from_host(0, s).unwrap();
        }
        best = best.min(t.elapsed());
    }
    gbps(bytes, best)
}

enum Net {
    Local,
    Tcp(String),
}

fn spec(data: &Data, net: &Net) -> seqfeed_loader::NodeSpec {
    let opts = ConnectOptions {
        connections: 8,
        ..ConnectOptions::default()
    };
    match net {
        Net::Local => node_spec_with(
            TransportKind::Local,
            &Endpoint::local(data.dir.path(), Some(data.names.clone())),
            &opts,
        )
        .unwrap(),
        Net::Tcp(addr) => node_spec_with(
            TransportKind::Tcp,
            &Endpoint::remote("gpu-check-node", addr.clone(), Some(data.names.clone())),
            &opts,
        )
        .unwrap(),
    }
}

/// Runs the loader over every step. With `verify`, every batch's device
/// bytes (or host bytes for host destinations) are compared with the files.
/// Returns (mismatched steps, GB/s from the first batch to the last).
fn run(data: &Data, net: &Net, alloc: Arc<dyn BufferAllocator>, verify: bool) -> (usize, f64) {
    let reader = ClusterReader::connect(
        data.names.clone(),
        vec![spec(data, net)],
        RetryPolicy::default(),
    )
    .unwrap();
    let config = LoaderConfig::new(0, 1).prefetch(4);
    let mut loader = Loader::with_allocator(config, data.blocks.clone(), reader, alloc).unwrap();
    let mut bad = 0;
    let mut first: Option<Instant> = None;
    let mut n = 0u64;
    let mut scratch = Vec::new();
    while let Some(batch) = loader.next() {
        let batch = batch.unwrap();
        let step = batch.step() as usize;
        match device_batch(&batch) {
            Some(db) => {
                let db = db.unwrap();
                let slot = CudaStepBuffer::of(&batch).unwrap().slot();
                slot.event().synchronize().unwrap(); // the consumer's wait
                if verify {
                    scratch.resize(db.bytes(), 0);
                    match slot.widened_buffer() {
                        None => {
                            slot.device_buffer().copy_to_host(0, &mut scratch).unwrap();
                            if scratch != data.expected[step] {
                                eprintln!(
                                    "MISMATCH step {step}: device bytes differ from the files"
                                );
                                bad += 1;
                            }
                        }
                        Some(wide) => {
                            wide.copy_to_host(0, &mut scratch).unwrap();
                            let want = seqfeed_cuda::widen_u16_host(&data.expected[step]);
                            let same = scratch
                                .chunks_exact(8)
                                .zip(&want)
                                .all(|(g, w)| i64::from_le_bytes(g.try_into().unwrap()) == *w);
                            if !same || scratch.len() != want.len() * 8 {
                                eprintln!("MISMATCH step {step}: int64 ids differ from the files");
                                bad += 1;
                            }
                        }
                    }
                }
            }
            None => {
                if verify && batch.bytes() != data.expected[step].as_slice() {
                    eprintln!("MISMATCH step {step}: host bytes differ from the files");
                    bad += 1;
                }
            }
        }
        if first.is_none() {
            first = Some(Instant::now());
        } else {
            n += 1;
        }
    }
    let rate = match first {
        Some(t) => gbps(n * (ROWS * SEQ_LEN * 2) as u64, t.elapsed()),
        None => 0.0,
    };
    (bad, rate)
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let require = std::env::args().any(|a| a == "--require");
    let host_only = std::env::args().any(|a| a == "--host-only");
    let dev = match probe() {
        CudaProbe::NotAvailable { reason } => {
            println!("NO CUDA: {reason}");
            if require {
                return ExitCode::from(2);
            }
            if !host_only {
                return ExitCode::SUCCESS;
            }
            println!("--host-only: checking the loader paths into host memory only");
            None
        }
        CudaProbe::Available(sys) => {
            print_system(sys);
            match Device::from_local_rank() {
                Ok(d) => Some(d),
                Err(e) => {
                    println!("ERROR opening the rank's GPU: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let steps = env_usize("SEQFEED_GPU_CHECK_STEPS", 64).max(2) as u64;
    let file_mb = env_usize("SEQFEED_GPU_CHECK_FILE_MB", 128).max(8);
    let t = Instant::now();
    let data = make_data(steps, file_mb);
    println!(
        "dataset: {FILES} files x {file_mb} MiB, {steps} steps x {} MiB ({:.2} GiB per pass), made in {:.1} s",
        STEP_BYTES >> 20,
        (steps as usize * STEP_BYTES) as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );
    let mut failures = 0;
    if let Some(dev) = &dev {
        failures += device_checks(dev, &data);
        failures += slot_reuse_checks(dev);
    }
    failures += loader_checks(dev.as_ref(), &data, steps);
    if failures > 0 {
        println!("FAILED: {failures} mismatch(es)");
        ExitCode::from(1)
    } else {
        println!("OK");
        ExitCode::SUCCESS
    }
}

fn print_system(sys: &seqfeed_cuda::CudaSystem) {
    println!(
        "driver API {}.{}, {} device(s), peer-memory module: {}",
        sys.driver_version / 1000,
        (sys.driver_version % 1000) / 10,
        sys.devices.len(),
        sys.peer_mem_module.as_deref().unwrap_or("none")
    );
    for d in &sys.devices {
        println!(
            "GPU {}: {} cc {}.{} {} MiB pci {} dmabuf={} gpudirect_rdma={}",
            d.index,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.total_mem >> 20,
            d.pci_bus_id,
            d.dmabuf_supported,
            d.gpudirect_rdma_supported
        );
    }
}

/// Path decisions, dmabuf export, NVRTC widening. Returns mismatches.
fn device_checks(dev: &Device, data: &Data) -> usize {
    let side = gpu_side(dev.index());
    for caps in [
        TransportCaps::cpu_copy("tcp"),
        TransportCaps::rdma("verbs", false),
        TransportCaps::rdma("verbs", true),
    ] {
        let c = choose_path(&side, &caps, None).unwrap();
        println!(
            "path decision for {} (dmabuf_mr={}): {}",
            caps.backend,
            caps.dmabuf_mr,
            c.summary()
        );
    }
    let b = dev.alloc(8 << 20, "dmabuf probe").unwrap();
    match b.export_dmabuf(4096, 4 << 20) {
        Ok(r) => {
            use std::os::fd::AsRawFd;
            println!(
                "dmabuf export: OK (fd {}, offset {}, len {}): usable with a NIC that supports ibv_reg_dmabuf_mr",
                r.fd.as_raw_fd(),
                r.fd_offset,
                r.len
            );
        }
        Err(e) => println!("dmabuf export: refused: {e}"),
    }
    // NVRTC widening of step 0 on the device vs the host reference.
    match Widener::new(dev) {
        Ok(w) => {
            let src = dev.alloc(STEP_BYTES, "widen source").unwrap();
            src.copy_from_host(0, &data.expected[0]).unwrap();
            let dst = dev.alloc(STEP_BYTES * 4, "widen output").unwrap();
            let s = dev.stream().unwrap();
            let (e0, e1) = (dev.event(true).unwrap(), dev.event(true).unwrap());
            let n = STEP_BYTES / 2;
            w.widen(&src, 0, DType::U16, n, &dst, 0, &s).unwrap(); // warm-up
            e0.record(&s).unwrap();
            w.widen(&src, 0, DType::U16, n, &dst, 0, &s).unwrap();
            e1.record(&s).unwrap();
            e1.synchronize().unwrap();
            let ms = e1.elapsed_ms(&e0).unwrap();
            let mut got = vec![0u8; STEP_BYTES * 4];
            dst.copy_to_host(0, &mut got).unwrap();
            let want = seqfeed_cuda::widen_u16_host(&data.expected[0]);
            let ok = got
                .chunks_exact(8)
                .zip(&want)
                .all(|(g, w)| i64::from_le_bytes(g.try_into().unwrap()) == *w);
            println!(
                "widen u16->i64 (NVRTC): {} for {n} tokens; {:.1} GB/s read+written on the device",
                if ok {
                    "matches the host reference"
                } else {
                    "MISMATCH"
                },
                (STEP_BYTES * 5) as f64 / (f64::from(ms).max(1e-6) * 1e-3) / 1e9
            );
            usize::from(!ok)
        }
        Err(e) => {
            println!("widen u16->i64: skipped: {e}");
            0
        }
    }
}

/// Slot reuse after release: a consumer holding twice the ring over time
/// (prefetch 1 and 2), and the next write into a released slot ordered
/// after the consumer stream. Returns failures.
fn slot_reuse_checks(dev: &Device) -> usize {
    let mut failures = 0;
    for prefetch in [1, 2] {
        match release_checks::held_batches(dev, prefetch) {
            Ok(s) => println!("held batches (prefetch {prefetch}): OK: {s}"),
            Err(e) => {
                println!("held batches (prefetch {prefetch}): FAILED: {e}");
                failures += 1;
            }
        }
    }
    match release_checks::release_ordering(dev) {
        Ok(s) => println!("release ordering: OK: {s}"),
        Err(e) => {
            println!("release ordering: FAILED: {e}");
            failures += 1;
        }
    }
    failures
}

/// Host memcpy of the same bytes: the reference in --host-only mode.
fn reference_memcpy(steps: &[&[u8]]) -> f64 {
    let bytes: u64 = steps.iter().map(|s| s.len() as u64).sum();
    let mut dst = vec![0u8; STEP_BYTES];
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for s in steps {
            dst.copy_from_slice(s);
            std::hint::black_box(&mut dst);
        }
        best = best.min(t.elapsed());
    }
    gbps(bytes, best)
}

/// Loader over local and tcp into device memory (or host memory without a
/// device): bytes checked against the files, then GB/s as ratios.
fn loader_checks(dev: Option<&Device>, data: &Data, steps: u64) -> usize {
    let step_slices: Vec<&[u8]> = data.expected.iter().map(Vec::as_slice).collect();
    let mut refs: Vec<(String, f64)> = Vec::new();
    if let Some(dev) = dev {
        let refbuf = dev.alloc(STEP_BYTES, "reference copies").unwrap();
        let pageable = reference_htod(&refbuf, &step_slices);
        let mut pinned = dev.alloc_pinned(STEP_BYTES).unwrap();
        pinned.as_mut_slice().copy_from_slice(&data.expected[0]);
        let pinned_steps: Vec<&[u8]> = (0..steps).map(|_| pinned.as_slice()).collect();
        let pinned_rate = reference_htod(&refbuf, &pinned_steps);
        println!(
            "reference cuMemcpyHtoD: pageable {pageable:.2} GB/s, pinned {pinned_rate:.2} GB/s"
        );
        refs.push(("cuMemcpyHtoD (pageable)".into(), pageable));
        refs.push(("cuMemcpyHtoD (pinned)".into(), pinned_rate));
    } else {
        let m = reference_memcpy(&step_slices);
        println!("reference host memcpy: {m:.2} GB/s");
        refs.push(("host memcpy".into(), m));
    }
    // The node for tcp: plain files, loopback only.
    let mut cfg = seqfeed_node::NodeConfig::new(data.dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.files = Some(data.names.clone());
    cfg.fingerprint = Some("gpu-check".into());
    cfg.worker_threads = 8;
    let node = match seqfeed_node::Node::start(cfg) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("tcp node did not start ({e}): tcp paths skipped");
            None
        }
    };
    let mut nets = vec![("local", Net::Local)];
    if let Some(n) = &node {
        nets.push(("tcp", Net::Tcp(n.local_addr().to_string())));
    }
    let mut failures = 0;
    for (name, net) in &nets {
        let (bad, _) = run(data, net, Arc::new(HeapAllocator), true);
        println!(
            "bytes in host memory via loader/{name}: {} of {steps} steps match the files",
            steps as usize - bad
        );
        failures += bad;
        let (_, host_rate) = run(data, net, Arc::new(HeapAllocator), false);
        let Some(dev) = dev else {
            for (rn, r) in &refs {
                ratio_line(&format!("loader/{name} -> host memory"), host_rate, *r, rn);
            }
            continue;
        };
        let bounce: Arc<dyn BufferAllocator> = Arc::new(CudaBounceAllocator::new(dev).unwrap());
        let (bad, _) = run(data, net, bounce.clone(), true);
        println!(
            "bytes on the device via loader/{name}/bounce: {} of {steps} steps match the files",
            steps as usize - bad
        );
        failures += bad;
        let (_, rate) = run(data, net, bounce, false);
        for (rn, r) in &refs {
            ratio_line(
                &format!("loader/{name} -> pinned bounce -> device"),
                rate,
                *r,
                rn,
            );
        }
        ratio_line(
            &format!("loader/{name} -> pinned bounce -> device"),
            rate,
            host_rate,
            &format!("loader/{name} -> host memory"),
        );
    }
    if let Some(dev) = dev {
        match CudaBounceAllocator::with_widening(dev, Dtype::U16) {
            Ok(a) => {
                let a: Arc<dyn BufferAllocator> = Arc::new(a);
                let (bad, _) = run(data, &Net::Local, a.clone(), true);
                println!(
                    "int64 ids on the device via loader/local/bounce+widen: {} of {steps} steps match the files",
                    steps as usize - bad
                );
                failures += bad;
                let (_, rate) = run(data, &Net::Local, a, false);
                for (rn, r) in &refs {
                    ratio_line("loader/local -> bounce -> widen to int64", rate, *r, rn);
                }
            }
            Err(e) => println!("loader with widening: skipped: {e}"),
        }
    }
    if let Some(n) = node {
        n.shutdown();
    }
    if dev.is_some() {
        println!("direct paths (dmabuf / peermem): need an RDMA NIC and a verbs transport reading into device memory; not measured by this check");
    }
    failures
}
