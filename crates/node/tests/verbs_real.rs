//! The real verbs acceptor ([`seqfeed_node::verbs_factory`]) on this host's
//! RDMA device, through the node's control service on 127.0.0.1: the read
//! depth exchanged in `VerbsConnect` / `VerbsAccept` is the smaller of the
//! client's and the device's, and a connection's queue pairs are destroyed
//! when it closes (counted by the node and, where the `rdma` tool is
//! present, by the kernel's resource tracking).
//!
//! Without a usable RDMA device it prints why and passes, unless
//! `SEQFEED_REQUIRE_RDMA=1` (the rxe guest sets it), which makes that a
//! failure.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::time::{Duration, Instant};

use seqfeed_node::{verbs_factory, Node, NodeConfig, NodeHandle};
use seqfeed_transport::ControlClient;
use seqfeed_verbs::DeviceInfo;
use seqfeed_wire::{Frame, QpEndpoint, VerbsAccept, VerbsConnect};

/// The first usable device, or `None` (after printing why) when the test
/// may skip.
fn device() -> Option<DeviceInfo> {
    let require = std::env::var("SEQFEED_REQUIRE_RDMA").is_ok_and(|v| v == "1");
    let found = seqfeed_node::verbs_devices().and_then(|names| {
        let all = seqfeed_verbs::list_devices().map_err(|e| e.to_string())?;
        all.into_iter()
            .find(|d| d.active && names.contains(&d.name))
            .ok_or_else(|| format!("none of {names:?} listed as active"))
    });
    match found {
        Ok(d) => Some(d),
        Err(reason) if require => panic!("SEQFEED_REQUIRE_RDMA=1 but no usable device: {reason}"),
        Err(reason) => {
            eprintln!("SKIP: no usable RDMA device here ({reason})");
            None
        }
    }
}

/// RC queue pairs the kernel tracks for this test's node threads (named
/// `seqfeed-node`), from `rdma resource show qp`; `None` without the tool.
fn kernel_qps(dev: &str) -> Option<usize> {
    let out = std::process::Command::new("rdma")
        .args(["resource", "show", "qp", "link", dev])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.windows(2).any(|p| p == ["type", "RC"])
                    && w.windows(2).any(|p| p == ["comm", "seqfeed-node"])
            })
            .count(),
    )
}

/// Waits (bounded) until the node holds `want` QPs; returns what it holds.
fn wait_open(node: &NodeHandle, want: usize) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = node.verbs_open_qps();
        if n == Some(want) || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(c: &mut ControlClient, dev: &DeviceInfo, depths: &[u8], first_qpn: u32) -> VerbsAccept {
    // Endpoints on our own device: the node's QPs reach RTS without any
    // traffic, so no client QP needs to exist behind these numbers.
    let qps = depths
        .iter()
        .enumerate()
        .map(|(i, &d)| QpEndpoint {
            qp_num: first_qpn + i as u32,
            psn: 0x1234 + i as u32,
            gid: dev.gid,
            lid: dev.lid,
            mtu: dev.mtu,
            rd_atomic: d,
        })
        .collect();
    match c
        .request(&Frame::VerbsConnect(VerbsConnect {
            qps,
            device: dev.name.clone(),
            rail: 0,
            replaces: vec![],
        }))
        .unwrap()
    {
        Frame::VerbsAccept(a) => a,
        f => panic!("expected VerbsAccept, got {f:?}"),
    }
}

#[test]
fn real_acceptor_negotiates_read_depth_and_frees_qps_on_close() {
    let Some(dev) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.node_name = "node-real".into();
    cfg.verbs = Some(verbs_factory(Some(vec![dev.name.clone()])));
    let node = Node::start(cfg).unwrap();
    assert_eq!(node.verbs_open_qps(), Some(0));
    let base = kernel_qps(&dev.name);
    eprintln!(
        "device {} max_qp_rd_atom {} mtu {}; kernel RC QPs of the node before: {base:?}",
        dev.name, dev.max_qp_rd_atom, dev.mtu
    );
    let max = dev.max_qp_rd_atom.min(255) as u8;
    let mut seen = vec![base];

    // Client A: depths 1, 4, 0 (unknown) and 255.
    let mut a = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let acc = connect(&mut a, &dev, &[1, 4, 0, 255], 0x100);
    let got: Vec<u8> = acc.qps.iter().map(|q| q.rd_atomic).collect();
    assert_eq!(
        got,
        vec![1, 4.min(max), max, max],
        "responder depth = min(client, device)"
    );
    assert!(acc.qps.iter().all(|q| q.mtu == dev.mtu && q.gid == dev.gid));
    assert_eq!(acc.regions.len(), node.regions().len());
    assert!(acc.regions.iter().all(|r| r.rkey != 0 || r.addr == 0));
    // Client B: two more QPs.
    let mut b = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let acc_b = connect(&mut b, &dev, &[8, 8], 0x200);
    assert_eq!(acc_b.qps.len(), 2);
    assert_eq!(node.verbs_open_qps(), Some(6));
    seen.push(kernel_qps(&dev.name));
    if let (Some(b0), Some(now)) = (base, seen[1]) {
        assert_eq!(now, b0 + 6, "kernel RC QPs of the node");
    }

    // A leaves: exactly its four QPs are destroyed.
    drop(a);
    assert_eq!(wait_open(&node, 2), Some(2));
    seen.push(kernel_qps(&dev.name));
    if let (Some(b0), Some(now)) = (base, seen[2]) {
        assert_eq!(now, b0 + 2, "kernel RC QPs after client A left");
    }
    // B still works, then leaves.
    let again = connect(&mut b, &dev, &[2], 0x300);
    assert_eq!(again.qps[0].rd_atomic, 2.min(max));
    assert_eq!(node.verbs_open_qps(), Some(3));
    drop(b);
    assert_eq!(wait_open(&node, 0), Some(0));
    seen.push(kernel_qps(&dev.name));
    if let (Some(b0), Some(now)) = (base, seen[3]) {
        assert_eq!(now, b0, "kernel RC QPs after every client left");
    }
    eprintln!(
        "depths {got:?} (device max {max}); QPs freed on close (kernel RC QPs of the node: {})",
        if seen.iter().all(Option::is_some) {
            seen.iter()
                .map(|n| n.unwrap_or(0).to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        } else {
            "not available: no rdma tool".into()
        }
    );
    node.shutdown();
}

/// Issue 10 item 2 on a real device: client A has a QP error injected and
/// rebuilt 1,000 times (each rebuild names the node QP it replaces), while
/// client B reads random batches, checked byte for byte against the files,
/// without a single error or rebuild. The node's QP count never passes the
/// two clients' lanes, and the kernel's count of the node's RC QPs stays
/// bounded (sampled every 100 rebuilds).
#[test]
fn a_thousand_rebuilds_keep_the_node_bounded_and_others_reading() {
    use rand::SeedableRng;
    use seqfeed_transport::{LocalTransport, Transport};
    use seqfeed_verbs::{ClientOptions, VerbsTransport};

    let Some(dev) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.node_name = "node-rebuild".into();
    cfg.verbs = Some(verbs_factory(Some(vec![dev.name.clone()])));
    let node = Node::start(cfg).unwrap();
    let names: Vec<String> = node.regions().iter().map(|r| r.name.clone()).collect();
    let base = kernel_qps(&dev.name);
    let vopts = || ClientOptions {
        devices: Some(vec![dev.name.clone()]),
        qps_per_rail: 2,
        max_rebuilds: 2,
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let addr = node.local_addr().to_string();
    let mut a = VerbsTransport::connect_node(&addr, &common::opts(1), vopts()).unwrap();
    let mut b = VerbsTransport::connect_node(&addr, &common::opts(1), vopts()).unwrap();
    let lanes = a.qp_count() + b.qp_count();
    assert_eq!(node.verbs_open_qps(), Some(lanes));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        let root = dir.path().to_path_buf();
        let names = names.clone();
        std::thread::spawn(move || {
            let mut local = LocalTransport::open(&root, &names).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut batches = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || batches == 0 {
                let (reads, len) = common::random_batch(&mut rng, local.regions(), 64, 16_384);
                let mut want = vec![0x5au8; len];
                local.read_batch(&reads, &mut want).unwrap();
                let mut got = vec![0x5au8; len];
                if let Err(e) = b.read_batch(&reads, &mut got) {
                    return Err(format!("client B, batch {batches}: {e}"));
                }
                if got != want {
                    return Err(format!("client B, batch {batches}: bytes differ"));
                }
                batches += 1;
            }
            Ok((batches, b.counters().rebuilds, b))
        })
    };
    let mut local = LocalTransport::open(dir.path(), &names).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (mut peak, mut kpeak) = (0usize, base);
    let t0 = Instant::now();
    for i in 0..1000usize {
        assert!(a.inject_qp_error(i % a.qp_count()), "inject {i}");
        let (reads, len) = common::random_batch(&mut rng, local.regions(), 4, 4096);
        let mut want = vec![0u8; len];
        local.read_batch(&reads, &mut want).unwrap();
        let mut got = vec![0u8; len];
        a.read_batch(&reads, &mut got)
            .unwrap_or_else(|e| panic!("client A, rebuild {i}: {e}"));
        assert_eq!(got, want, "client A, rebuild {i}");
        peak = peak.max(node.verbs_open_qps().unwrap());
        if i % 100 == 99 {
            if let (Some(b0), Some(now)) = (base, kernel_qps(&dev.name)) {
                kpeak = Some(kpeak.unwrap_or(b0).max(now));
                assert!(
                    now <= b0 + lanes + 2,
                    "rebuild {i}: kernel holds {now} RC QPs of the node (base {b0}, {lanes} lanes)"
                );
            }
        }
    }
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (batches, b_rebuilds, b) = reader.join().unwrap().unwrap();
    assert!(
        a.counters().rebuilds >= 1000,
        "{} rebuilds",
        a.counters().rebuilds
    );
    assert_eq!(b_rebuilds, 0, "client B never saw a QP error");
    assert!(
        peak <= lanes,
        "node held up to {peak} QPs for {lanes} lanes"
    );
    assert_eq!(node.verbs_open_qps(), Some(lanes));
    drop(a);
    drop(b);
    assert_eq!(wait_open(&node, 0), Some(0));
    eprintln!(
        "rebuilds: A {} in {:.1} s; node QPs peak {peak} for {lanes} lanes; kernel RC QPs of the node peak {} (base {}); B read {batches} batches, 0 errors",
        1000,
        took.as_secs_f64(),
        kpeak.map_or("n/a".to_string(), |k| k.to_string()),
        base.map_or("n/a".to_string(), |k| k.to_string()),
    );
    node.shutdown();
}
