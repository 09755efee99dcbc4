//! Transport benchmark: random 16 KiB sequence reads (4096 tokens x u32),
//! one node, one rank, loopback.
//!
//! Measures, in this run, side by side:
//! * the `tcp` transport (in-process node on 127.0.0.1, 1 connection and
//!   several) against `iperf3` on the same loopback (single stream, and
//!   `-P N`, and with 1 MiB writes (iperf3's largest), for information):
//!   targets >= 0.7x with one connection, >= 1.0x with several. tcp and
//!   iperf3 run in interleaved rounds (best of each) so both see the same
//!   machine load;
//! * the `local` transport against a single-threaded memcpy of the same
//!   byte ranges from the same mapping: target >= 0.7x.
//!
//! With the tcp rows it prints CPU seconds per GB moved: in the client
//! threads (the calling thread and the transport's receive workers) and in
//! the whole process (client plus the in-process node), against iperf3's
//! client plus server (its `-J` CPU utilization). The same counters as
//! getrusage(2), so the verbs rows of `rxe_verbs` compare with these.
//!
//! Every transported batch is checked once against the reference copy.
//! iperf3 comes from the Debian package (`scripts/setup.sh`); without it the
//! tcp ratios are reported as unavailable and the absolute GB/s printed.
//!
//! Environment: `SEQFEED_BENCH_SCALE` (float, default 1: scales the dataset
//! size and the time per measurement), `SEQFEED_BENCH_CONNECTIONS` (the
//! "several" connection count, default 4), `SEQFEED_BENCH_RECEIVE_THREADS`
//! (the tcp transport's `receive_threads`, default 0: half the CPUs).

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use seqfeed_benches::{cpu_times, print_ratio, rate, CpuTimes};
use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::{ConnectOptions, LocalTransport, ReadRequest, TcpTransport, Transport};

const SEQ_TOKENS: u64 = 4096;
const SEQ_BYTES: u64 = SEQ_TOKENS * 4;
/// Reads per batch (a rank's share of a step): 256 x 16 KiB = 4 MiB.
const BATCH_READS: usize = 256;

fn scale() -> f64 {
    std::env::var("SEQFEED_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

struct Workload {
    batches: Vec<Vec<ReadRequest>>,
    bytes_per_batch: usize,
}

/// Runs `f` over the batches repeatedly for about `secs`, returns bytes/s
/// of the best of three rounds.
fn measure(secs: f64, bytes_per_batch: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut n = 0usize;
        while t0.elapsed().as_secs_f64() < secs / 3.0 {
            f(n);
            n += 1;
        }
        best = best.max(rate((n * bytes_per_batch) as u64, t0.elapsed()));
    }
    best
}

/// Bytes moved and CPU used while moving them.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerGb {
    cpu: CpuTimes,
    bytes: u64,
}

impl CpuPerGb {
    fn per_gb(&self, cpu: f64) -> f64 {
        cpu / (self.bytes as f64 / 1e9).max(1e-12)
    }
}

/// One iperf3 run: bytes/s received, and CPU seconds per GB of client and
/// server together (`None` when iperf3 did not report them).
#[derive(Debug, Clone, Copy)]
struct Iperf {
    rate: f64,
    cpu_per_gb: Option<f64>,
}

/// iperf3 on 127.0.0.1: `streams` parallel streams, `len` bytes per
/// write/read (`None`: iperf3's default, 128 KiB).
fn iperf3(streams: usize, secs: u64, len: Option<&str>) -> Result<Iperf, String> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 not runnable ({e}); install it with scripts/setup.sh"))?;
    let mut out = Err("iperf3 client could not reach its server".to_string());
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J"])
            .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
            .args(len.map(|l| ["-l", l]).into_iter().flatten())
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            out = Ok(o.stdout);
            break;
        }
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if !text.contains("unable to connect") {
            // Not the server starting late: a real failure.
            out = Err(format!("iperf3 client failed: {}", text.trim()));
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| format!("iperf3 -J output: {e}"))?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 -J output has no end.sum_received.bits_per_second")?;
    // Utilization is CPU time (getrusage) over wall time, in percent.
    let cpu = &v["end"]["cpu_utilization_percent"];
    let cpu_per_gb = match (
        cpu["host_total"].as_f64(),
        cpu["remote_total"].as_f64(),
        v["end"]["sum_received"]["seconds"].as_f64(),
        v["end"]["sum_received"]["bytes"].as_f64(),
    ) {
        (Some(h), Some(r), Some(s), Some(b)) if b > 0.0 => Some((h + r) / 100.0 * s / (b / 1e9)),
        _ => None,
    };
    Ok(Iperf {
        rate: bps / 8.0,
        cpu_per_gb,
    })
}

fn gbs(x: f64) -> String {
    format!("{:.2} GB/s", x / 1e9)
}

fn main() {
    let scale = scale();
    let several: usize = std::env::var("SEQFEED_BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let receive_threads: usize = std::env::var("SEQFEED_BENCH_RECEIVE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let secs = 1.5 * scale;
    let count = ((8192.0 * scale) as u64).max(1024); // 128 MiB at scale 1
    println!(
        "transport bench: random {} KiB reads, {} per batch, dataset {} MiB, {:.1} s per measurement",
        SEQ_BYTES / 1024,
        BATCH_READS,
        (count * SEQ_BYTES) >> 20,
        secs
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = Instant::now();
    write_synthetic_source(
        dir.path().join("bench"),
        "bench",
        Dtype::U32,
        SEQ_TOKENS,
        count,
        7,
        64 << 20,
    )
    .expect("writing the bench dataset");
    let ds = Dataset::open(dir.path()).expect("opening the bench dataset");
    println!("dataset written in {:.1} s", t0.elapsed().as_secs_f64());

    // Random sequences across the source's files.
    let src = &ds.sources()[0];
    let files: Vec<String> = ds.all_files().into_iter().map(|f| f.2).collect();
    let mut local = LocalTransport::open(dir.path(), &files).expect("local transport");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let n_batches = 64;
    let workload = Workload {
        batches: (0..n_batches)
            .map(|_| {
                (0..BATCH_READS)
                    .map(|i| {
                        let seq = rng.gen_range(0..count);
                        let (fi, k) = src.locate(seq).expect("locate");
                        let f = &src.files()[fi];
                        let region = local
                            .table()
                            .find(&ds.file_path(0, fi))
                            .expect("region of file");
                        ReadRequest {
                            region,
                            offset: f.sequence_offset(k),
                            len: SEQ_BYTES as u32,
                            dst_offset: i as u64 * SEQ_BYTES,
                        }
                    })
                    .collect()
            })
            .collect(),
        bytes_per_batch: BATCH_READS * SEQ_BYTES as usize,
    };
    let mut dst = vec![0u8; workload.bytes_per_batch];
    let mut reference = vec![vec![0u8; workload.bytes_per_batch]; 4];

    // --- local vs memcpy of the same ranges --------------------------------
    let table = local.table().clone();
    for (i, r) in reference.iter_mut().enumerate() {
        local
            .read_batch(&workload.batches[i], r)
            .expect("local read");
    }
    // Interleaved rounds (best of each), so both see the same machine load.
    let (mut memcpy, mut local_rate) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let m = measure(secs / 3.0, workload.bytes_per_batch, |n| {
            let b = &workload.batches[n % n_batches];
            for r in b {
                let src = table.get(r.region).expect("region").bytes();
                let o = r.offset as usize;
                let d = r.dst_offset as usize;
                dst[d..d + r.len as usize].copy_from_slice(&src[o..o + r.len as usize]);
            }
            black_box(&mut dst);
        });
        memcpy = memcpy.max(m);
        let l = measure(secs / 3.0, workload.bytes_per_batch, |n| {
            local
                .read_batch(&workload.batches[n % n_batches], &mut dst)
                .expect("local read");
            black_box(&mut dst);
        });
        local_rate = local_rate.max(l);
    }
    println!(
        "memcpy of the same ranges: {}, local transport: {}",
        gbs(memcpy),
        gbs(local_rate)
    );
    print_ratio(
        "local transport, random 16 KiB reads",
        local_rate,
        memcpy,
        "memcpy",
        Some(0.7),
    );

    // --- tcp vs iperf3 -----------------------------------------------------
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    cfg.node_name = "bench-node".into();
    cfg.worker_threads = several.max(2);
    let node = Node::start(cfg).expect("starting the node");
    let mut transports = Vec::new();
    for conns in [1, several] {
        let opts = ConnectOptions {
            connections: conns,
            receive_threads,
            expected_fingerprint: Some(ds.fingerprint().to_owned()),
            ..ConnectOptions::default()
        };
        let mut tcp = TcpTransport::connect(node.local_addr(), &opts).expect("tcp connect");
        println!(
            "tcp, {conns} connection(s): receive_threads {receive_threads} ({} workers)",
            tcp.receive_workers()
        );
        for (i, r) in reference.iter().enumerate() {
            dst.fill(0);
            tcp.read_batch(&workload.batches[i], &mut dst)
                .expect("tcp read");
            assert!(dst == *r, "tcp batch {i} differs from the local reference");
        }
        transports.push((conns, tcp, 0.0f64, CpuPerGb::default()));
    }
    // Interleave tcp and iperf3 rounds so both see the same machine load;
    // keep the best of each.
    let rounds = 3;
    let mut iperf_single: Result<Iperf, String> = Err("not run".into());
    let mut iperf_multi: Result<Iperf, String> = Err("not run".into());
    let mut iperf_big: Result<Iperf, String> = Err("not run".into());
    for round in 0..rounds {
        for (_, tcp, best, used) in transports.iter_mut() {
            let mut moved = 0u64;
            let c0 = cpu_times(&["sf-rx"]);
            let r = measure(secs / rounds as f64, workload.bytes_per_batch, |n| {
                tcp.read_batch(&workload.batches[n % n_batches], &mut dst)
                    .expect("tcp read");
                black_box(&mut dst);
                moved += workload.bytes_per_batch as u64;
            });
            let c = cpu_times(&["sf-rx"]) - c0;
            used.cpu.process += c.process;
            used.cpu.client += c.client;
            used.bytes += moved;
            *best = best.max(r);
        }
        if round == 0 || iperf_single.is_ok() {
            for (streams, len, slot) in [
                (1, None, &mut iperf_single),
                (several, None, &mut iperf_multi),
                (1, Some("1M"), &mut iperf_big),
            ] {
                let r = iperf3(streams, 2, len);
                *slot = match (&*slot, r) {
                    (Ok(a), Ok(b)) if a.rate >= b.rate => Ok(*a),
                    (_, r) => r,
                };
            }
        }
    }
    let tcp_rates: Vec<(usize, f64)> = transports.iter().map(|t| (t.0, t.2)).collect();
    for (conns, r) in &tcp_rates {
        println!("tcp transport, {conns} connection(s): {}", gbs(*r));
    }
    for (conns, _, _, used) in &transports {
        println!(
            "tcp transport, {conns} connection(s): CPU s/GB {:.3} client threads, {:.3} process (client + node), over {:.1} GB",
            used.per_gb(used.cpu.client),
            used.per_gb(used.cpu.process),
            used.bytes as f64 / 1e9
        );
    }
    drop(node);

    match iperf_single {
        Err(e) => println!("iperf3 unavailable: {e}; tcp ratios not measured"),
        Ok(single) => {
            let cpu = |i: &Iperf| {
                i.cpu_per_gb.map_or_else(
                    || "CPU not reported".to_string(),
                    |c| format!("CPU s/GB {c:.3} client + server"),
                )
            };
            println!(
                "iperf3 loopback, 1 stream: {}, {}",
                gbs(single.rate),
                cpu(&single)
            );
            if let Ok(m) = &iperf_multi {
                println!(
                    "iperf3 loopback, {several} streams: {}, {}",
                    gbs(m.rate),
                    cpu(m)
                );
            }
            let multi = iperf_multi.map(|m| m.rate);
            if let Ok(b) = &iperf_big {
                println!(
                    "iperf3 loopback, 1 stream, 1 MiB writes (-l 1M): {}, {}",
                    gbs(b.rate),
                    cpu(b)
                );
            }
            let single = single.rate;
            let iperf_big = iperf_big.map(|b| b.rate);
            for (conns, r) in &tcp_rates {
                let target = if *conns == 1 { 0.7 } else { 1.0 };
                print_ratio(
                    &format!("tcp transport, {conns} connection(s)"),
                    *r,
                    single,
                    "iperf3 1 stream",
                    Some(target),
                );
                if let Ok(b) = &iperf_big {
                    print_ratio(
                        &format!("tcp transport, {conns} connection(s)"),
                        *r,
                        *b,
                        "iperf3 -l 1M",
                        None,
                    );
                }
                if *conns > 1 {
                    if let Ok(m) = &multi {
                        print_ratio(
                            &format!("tcp transport, {conns} connection(s)"),
                            *r,
                            *m,
                            &format!("iperf3 -P {several}"),
                            None,
                        );
                    }
                }
            }
        }
    }
}
