//! Verbs benchmark: random one-sided reads of 16 KiB (one 4096-token u32
//! sequence) and 64 KiB from a storage node with verbs enabled, one rank.
//!
//! Measured side by side in the same run (meant for the soft-RoCE guest,
//! `scripts/rxe/run.sh bench`, or any host with an RDMA device):
//! * the verbs transport against perftest's `ib_read_bw` at the same message
//!   size and QP count on the same device (target >= 0.9x);
//! * the same with the read depth capped at 16 and at 4 on both sides, against
//!   `ib_read_bw -o 16` / `-o 4` (target >= 0.95x). The client caps its
//!   initiator depth with `ClientOptions::max_outstanding`; the node has no
//!   cap of its own but answers each QP with responder resources
//!   min(client's depth, device's), so the cap bounds both ends of the QP
//!   (`max_rd_atomic` on the client, `max_dest_rd_atomic` on the node), as
//!   perftest's `-o` does given to server and client. Each row prints its QP
//!   occupancy, negotiated read depth and send-queue size, and the verbs
//!   client CPU seconds per GB against the tcp row of the same size and
//!   connection count (tcp does not depend on the read depth);
//! * the verbs transport against the tcp transport to the same node
//!   (same number of connections as QPs);
//! * message rates (reads/s) of both.
//!
//! Without an RDMA device it says why and prints the tcp baseline table
//! (tcp vs the local transport), so it runs anywhere.
//!
//! Environment: `SEQFEED_BENCH_SCALE` / `BENCH_SCALE` (float, default 1:
//! time per measurement and dataset size), `SEQFEED_BENCH_DEVICE` (default:
//! the first usable device), `SEQFEED_BENCH_QPS` (comma list, default `1,2`),
//! `SEQFEED_BENCH_DEPTHS` (comma list of read-depth caps, default `16,4`;
//! empty: none).

use std::hint::black_box;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use seqfeed_benches::{cpu_times, print_ratio, rate};
use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
use seqfeed_node::{verbs_factory, Node, NodeConfig};
use seqfeed_transport::{ConnectOptions, LocalTransport, ReadRequest, TcpTransport, Transport};
use seqfeed_verbs::{ClientOptions, Selection, VerbsTransport};

const SEQ_TOKENS: u64 = 4096;
const SEQ_BYTES: u64 = SEQ_TOKENS * 4;
/// Bytes per batch: 16 MiB (1024 x 16 KiB or 256 x 64 KiB).
const BATCH_BYTES: u64 = 16 << 20;
/// Interleaved rounds per measurement (best of each kept).
const ROUNDS: usize = 2;

fn scale() -> f64 {
    ["SEQFEED_BENCH_SCALE", "BENCH_SCALE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

/// Runs `f` for about `secs`; returns (bytes/s, batches/s).
fn measure(secs: f64, bytes_per_batch: u64, mut f: impl FnMut(usize)) -> (f64, f64) {
    f(0); // warm-up (registrations, connections)
    let t0 = Instant::now();
    let mut n = 0usize;
    while n < 2 || t0.elapsed().as_secs_f64() < secs {
        f(n);
        n += 1;
    }
    let d = t0.elapsed();
    (
        rate(n as u64 * bytes_per_batch, d),
        n as f64 / d.as_secs_f64(),
    )
}

/// perftest's ib_read_bw at `size` bytes with `qps` QPs for `secs` seconds on
/// `device`/`gid_index`, server and client in this host, with at most `outs`
/// outstanding reads per QP (`-o`, both sides; `None`: the device maximum);
/// returns bytes/s (from the reported message rate, which has no MB-vs-MiB
/// ambiguity).
#[allow(clippy::too_many_arguments)]
fn ib_read_bw(
    device: &str,
    gid_index: u8,
    ip: &str,
    size: u64,
    qps: usize,
    secs: u64,
    port: u16,
    outs: Option<u32>,
) -> Result<f64, String> {
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "-d",
            device,
            "-x",
            &gid_index.to_string(),
            "-F",
            "-s",
            &size.to_string(),
            "-q",
            &qps.to_string(),
            "-D",
            &secs.to_string(),
            "-p",
            &port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(o) = outs {
            v.extend(["-o".to_string(), o.to_string()]);
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut server = Command::new("ib_read_bw")
        .args(args(&[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ib_read_bw not runnable ({e}); install perftest"))?;
    let mut out = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let o = Command::new("timeout")
            .arg((secs + 60).to_string())
            .arg("ib_read_bw")
            .args(args(&[ip]))
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            out = Some(text);
            break;
        }
        if !String::from_utf8_lossy(&o.stderr).contains("Couldn't connect") {
            let _ = server.kill();
            return Err(format!(
                "ib_read_bw client failed: {}{}",
                text,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    let _ = server.kill();
    let mut srv = String::new();
    if let Some(mut s) = server.stdout.take() {
        let _ = s.read_to_string(&mut srv);
    }
    let _ = server.wait();
    let out = out.ok_or("ib_read_bw client never connected to its server")?;
    // Data line after the "#bytes #iterations BW peak BW average MsgRate" header.
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("#bytes"));
    let header = lines
        .next()
        .ok_or_else(|| format!("no result header in ib_read_bw output:\n{out}"))?;
    let data = lines.next().ok_or("no result line in ib_read_bw output")?;
    let cols: Vec<f64> = data
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let mpps = *cols
        .last()
        .ok_or_else(|| format!("cannot parse {data:?} (header {header:?})"))?;
    if cols.first().copied() != Some(size as f64) {
        return Err(format!("unexpected ib_read_bw line {data:?}"));
    }
    Ok(mpps * 1e6 * size as f64)
}

fn mbs(x: f64) -> String {
    format!("{:.1} MB/s", x / 1e6)
}

fn main() {
    let scale = scale();
    let secs = (3.0 * scale).max(1.0);
    let count = ((4096.0 * scale) as u64).max(1024); // 64 MiB at scale 1
    let dir = tempfile::tempdir().expect("temp dir");
    write_synthetic_source(
        dir.path().join("bench"),
        "bench",
        Dtype::U32,
        SEQ_TOKENS,
        count,
        11,
        16 << 20,
    )
    .expect("writing the bench dataset");
    let ds = Dataset::open(dir.path()).expect("opening the bench dataset");
    let src = &ds.sources()[0];
    let files: Vec<String> = ds.all_files().into_iter().map(|f| f.2).collect();
    let mut local = LocalTransport::open(dir.path(), &files).expect("local transport");
    let selection = seqfeed_verbs::auto_select();
    println!(
        "BENCH rxe_verbs: dataset {} MiB in {} files, {:.1} s per measurement, transport auto -> {:?}",
        (count * SEQ_BYTES) >> 20,
        files.len(),
        secs,
        selection
    );

    // Batches of random, message-aligned reads inside one file each.
    let make =
        |msg: u64, rng: &mut rand::rngs::StdRng, local: &LocalTransport| -> Vec<ReadRequest> {
            let per = (BATCH_BYTES / msg) as usize;
            let seqs_per_msg = msg / SEQ_BYTES;
            (0..per)
                .map(|i| {
                    let (fi, k) = loop {
                        let seq = rng.gen_range(0..count);
                        let (fi, k) = src.locate(seq).expect("locate");
                        if k + seqs_per_msg <= src.files()[fi].count() {
                            break (fi, k - k % seqs_per_msg);
                        }
                    };
                    let f = &src.files()[fi];
                    ReadRequest {
                        region: local.table().find(&ds.file_path(0, fi)).expect("region"),
                        offset: f.sequence_offset(k),
                        len: msg as u32,
                        dst_offset: i as u64 * msg,
                    }
                })
                .collect()
        };

    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    cfg.node_name = "bench-node".into();
    cfg.worker_threads = 2;
    let device = match &selection {
        Selection::Verbs { devices } => {
            let d = std::env::var("SEQFEED_BENCH_DEVICE").unwrap_or_else(|_| devices[0].clone());
            cfg.verbs = Some(verbs_factory(Some(vec![d.clone()])));
            Some(d)
        }
        Selection::Tcp { reason } => {
            println!("SKIPPED verbs measurements: {reason}; printing the tcp baseline only");
            None
        }
    };
    let node = Node::start(cfg).expect("starting the node");
    let addr = node.local_addr().to_string();
    let copts = |conns: usize| ConnectOptions {
        connections: conns,
        expected_fingerprint: Some(ds.fingerprint().to_owned()),
        ..ConnectOptions::default()
    };
    let qps_list: Vec<usize> = std::env::var("SEQFEED_BENCH_QPS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2]);
    let depth_caps: Vec<u32> = std::env::var("SEQFEED_BENCH_DEPTHS")
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![16, 4]);
    let info = device.as_ref().map(|d| {
        seqfeed_verbs::list_devices()
            .expect("devices")
            .into_iter()
            .find(|i| &i.name == d)
            .expect("bench device")
    });
    let mut dst = vec![0u8; BATCH_BYTES as usize];
    let mut reference = vec![0u8; BATCH_BYTES as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut failed = false;
    let mut port = 18600u16;
    let chain: usize = std::env::var("SEQFEED_VERBS_CHAIN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    for msg in [SEQ_BYTES, 4 * SEQ_BYTES] {
        let batches: Vec<Vec<ReadRequest>> = (0..16).map(|_| make(msg, &mut rng, &local)).collect();
        let kib = msg / 1024;
        local
            .read_batch(&batches[0], &mut reference)
            .expect("local read");
        let (local_bw, _) = measure(secs / 2.0, BATCH_BYTES, |n| {
            local
                .read_batch(&batches[n % batches.len()], &mut dst)
                .expect("local read");
            black_box(&mut dst);
        });
        for &q in &qps_list {
            let mut tcp = TcpTransport::connect(addr.as_str(), &copts(q)).expect("tcp connect");
            dst.fill(0);
            tcp.read_batch(&batches[0], &mut dst).expect("tcp read");
            assert!(dst == reference, "tcp batch differs from the files");
            let (Some(dev), Some(info)) = (&device, &info) else {
                let (tcp_bw, _) = measure(secs, BATCH_BYTES, |n| {
                    tcp.read_batch(&batches[n % batches.len()], &mut dst)
                        .expect("tcp read");
                    black_box(&mut dst);
                });
                println!(
                    "BENCH {kib} KiB conns={q}: tcp {} ({:.0} reads/s), local {}",
                    mbs(tcp_bw),
                    tcp_bw / msg as f64,
                    mbs(local_bw)
                );
                print_ratio(
                    &format!("RATIO tcp/local {kib}KiB conns={q}"),
                    tcp_bw,
                    local_bw,
                    "local transport",
                    None,
                );
                continue;
            };
            let vopts = ClientOptions {
                devices: Some(vec![dev.clone()]),
                qps_per_rail: q,
                chain,
                ..Default::default()
            };
            let mut v = match VerbsTransport::connect_node(&addr, &copts(1), vopts) {
                Ok(v) => v,
                Err(e) => {
                    println!("CHECK bench-verbs-connect FAIL {e}");
                    failed = true;
                    continue;
                }
            };
            // The destination is a long-lived buffer (as a loader's ring): register it once.
            v.register_buffer(&mut dst)
                .expect("registering the destination");
            dst.fill(0);
            v.read_batch(&batches[0], &mut dst).expect("verbs read");
            assert!(dst == reference, "verbs batch differs from the files");
            let ip = std::net::Ipv6Addr::from(info.gid)
                .to_ipv4_mapped()
                .map(|a| a.to_string());
            // Interleave the three so all see the same machine load; keep the best of each.
            let (mut tcp_bw, mut verbs_bw, mut perf) =
                (0.0f64, 0.0f64, Err::<f64, String>("not run".into()));
            let (mut vreads, mut vposts) = (0u64, 0u64);
            // Client CPU seconds and bytes moved, over every round: the calling
            // thread (verbs polls there) plus the tcp transport's receive workers.
            let (mut tcp_cpu, mut tcp_bytes, mut verbs_cpu, mut verbs_bytes) =
                (0.0f64, 0u64, 0.0f64, 0u64);
            for _round in 0..ROUNDS {
                let c0 = cpu_times(&["sf-rx"]);
                let (t, _) = measure(secs, BATCH_BYTES, |n| {
                    tcp.read_batch(&batches[n % batches.len()], &mut dst)
                        .expect("tcp read");
                    black_box(&mut dst);
                    tcp_bytes += BATCH_BYTES;
                });
                tcp_cpu += (cpu_times(&["sf-rx"]) - c0).client;
                tcp_bw = tcp_bw.max(t);
                let c0 = cpu_times(&[]);
                let (r, _) = measure(secs, BATCH_BYTES, |n| {
                    let st = v
                        .read_batch(&batches[n % batches.len()], &mut dst)
                        .expect("verbs read");
                    (vreads, vposts) = (vreads + st.reads, vposts + st.posts);
                    black_box(&mut dst);
                    verbs_bytes += BATCH_BYTES;
                });
                verbs_cpu += (cpu_times(&[]) - c0).client;
                verbs_bw = verbs_bw.max(r);
                port += 1;
                let p = match &ip {
                    Some(ip) => ib_read_bw(
                        dev,
                        info.gid_index,
                        ip,
                        msg,
                        q,
                        secs.ceil() as u64,
                        port,
                        None,
                    ),
                    None => Err(format!(
                        "{dev} has no IPv4-mapped GID to point ib_read_bw at"
                    )),
                };
                perf = match (perf, p) {
                    (Ok(a), Ok(b)) => Ok(a.max(b)),
                    (_, p) => p,
                };
            }
            // QP occupancy (reads provably queued or on the wire / read depth, time-weighted):
            // independent of rxe's speed, so it shows what a ConnectX would see.
            let occupancy = v.counters().occupancy().unwrap_or(0.0);
            let (depth, sq_depth, _) = v.lane_depths().first().copied().unwrap_or_default();
            drop(v);
            drop(tcp);
            println!(
                "BENCH {kib} KiB q={q} chain={chain}: verbs {} ({:.0} reads/s, {:.1} reads/doorbell, occupancy {occupancy:.3} at read depth {depth}, send queue {sq_depth}), tcp {} ({:.0} reads/s), ib_read_bw {}",
                mbs(verbs_bw),
                verbs_bw / msg as f64,
                vreads as f64 / vposts.max(1) as f64,
                mbs(tcp_bw),
                tcp_bw / msg as f64,
                perf.as_ref().map(|p| format!("{} ({:.0} reads/s)", mbs(*p), p / msg as f64)).unwrap_or_else(|e| e.clone())
            );
            match perf {
                Ok(p) => {
                    print_ratio(
                        &format!("RATIO verbs/ib_read_bw {kib}KiB q={q}"),
                        verbs_bw,
                        p,
                        "ib_read_bw",
                        Some(0.9),
                    );
                    print_ratio(
                        &format!("RATIO verbs msg-rate/ib_read_bw {kib}KiB q={q}"),
                        verbs_bw / msg as f64,
                        p / msg as f64,
                        "ib_read_bw msg/s",
                        None,
                    );
                }
                Err(e) => {
                    println!("CHECK bench-ib_read_bw FAIL {e}");
                    failed = true;
                }
            }
            print_ratio(
                &format!("RATIO verbs/tcp {kib}KiB q={q}"),
                verbs_bw,
                tcp_bw,
                &format!("tcp ({q} conns)"),
                None,
            );
            // CPU seconds per GB moved in the client (lower is better).
            let per_gb = |cpu: f64, bytes: u64| cpu / (bytes as f64 / 1e9).max(1e-12);
            let (vc, tc) = (per_gb(verbs_cpu, verbs_bytes), per_gb(tcp_cpu, tcp_bytes));
            println!("BENCH {kib} KiB q={q}: client CPU s/GB verbs {vc:.3}, tcp {tc:.3}");
            print_ratio(
                &format!("RATIO verbs/tcp client CPU per GB {kib}KiB q={q}"),
                vc,
                tc,
                &format!("tcp ({q} conns) CPU/GB"),
                None,
            );

            // The same reads with the read depth capped on both sides, against
            // `ib_read_bw -o cap`, interleaved round by round.
            for &cap in &depth_caps {
                let vopts = ClientOptions {
                    devices: Some(vec![dev.clone()]),
                    qps_per_rail: q,
                    chain,
                    max_outstanding: Some(cap),
                    ..Default::default()
                };
                let mut v = match VerbsTransport::connect_node(&addr, &copts(1), vopts) {
                    Ok(v) => v,
                    Err(e) => {
                        println!("CHECK bench-verbs-connect-depth{cap} FAIL {e}");
                        failed = true;
                        continue;
                    }
                };
                v.register_buffer(&mut dst)
                    .expect("registering the destination");
                dst.fill(0);
                v.read_batch(&batches[0], &mut dst).expect("verbs read");
                assert!(dst == reference, "verbs batch differs from the files");
                let (depth, sq_depth, _) = v.lane_depths().first().copied().unwrap_or_default();
                if depth > cap {
                    println!("CHECK bench-depth{cap} FAIL read depth {depth} above the cap {cap}");
                    failed = true;
                }
                let (mut verbs_bw, mut perf) = (0.0f64, Err::<f64, String>("not run".into()));
                let (mut vreads, mut vposts, mut cpu, mut bytes) = (0u64, 0u64, 0.0f64, 0u64);
                for _round in 0..ROUNDS {
                    let c0 = cpu_times(&[]);
                    let (r, _) = measure(secs, BATCH_BYTES, |n| {
                        let st = v
                            .read_batch(&batches[n % batches.len()], &mut dst)
                            .expect("verbs read");
                        (vreads, vposts) = (vreads + st.reads, vposts + st.posts);
                        black_box(&mut dst);
                        bytes += BATCH_BYTES;
                    });
                    cpu += (cpu_times(&[]) - c0).client;
                    verbs_bw = verbs_bw.max(r);
                    port += 1;
                    let p = match &ip {
                        Some(ip) => ib_read_bw(
                            dev,
                            info.gid_index,
                            ip,
                            msg,
                            q,
                            secs.ceil() as u64,
                            port,
                            Some(cap),
                        ),
                        None => Err(format!(
                            "{dev} has no IPv4-mapped GID to point ib_read_bw at"
                        )),
                    };
                    perf = match (perf, p) {
                        (Ok(a), Ok(b)) => Ok(a.max(b)),
                        (_, p) => p,
                    };
                }
                let occupancy = v.counters().occupancy().unwrap_or(0.0);
                drop(v);
                println!(
                    "BENCH {kib} KiB q={q} chain={chain} depth cap {cap}: verbs {} ({:.0} reads/s, {:.1} reads/doorbell, occupancy {occupancy:.3} at read depth {depth}, send queue {sq_depth}), ib_read_bw -o {cap} {}",
                    mbs(verbs_bw),
                    verbs_bw / msg as f64,
                    vreads as f64 / vposts.max(1) as f64,
                    perf.as_ref().map(|p| format!("{} ({:.0} reads/s)", mbs(*p), p / msg as f64)).unwrap_or_else(|e| e.clone())
                );
                match perf {
                    Ok(p) => print_ratio(
                        &format!("RATIO verbs/ib_read_bw -o{cap} {kib}KiB q={q}"),
                        verbs_bw,
                        p,
                        &format!("ib_read_bw -o {cap}"),
                        Some(0.95),
                    ),
                    Err(e) => {
                        println!("CHECK bench-ib_read_bw-o{cap} FAIL {e}");
                        failed = true;
                    }
                }
                let vc = per_gb(cpu, bytes);
                println!(
                    "BENCH {kib} KiB q={q} depth cap {cap}: client CPU s/GB verbs {vc:.3}, tcp {tc:.3} (tcp row above)"
                );
                print_ratio(
                    &format!("RATIO verbs/tcp client CPU per GB -o{cap} {kib}KiB q={q}"),
                    vc,
                    tc,
                    &format!("tcp ({q} conns) CPU/GB"),
                    None,
                );
            }
        }
    }
    node.shutdown();
    if failed {
        std::process::exit(1);
    }
}
