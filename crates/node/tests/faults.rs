//! Faults with real sockets and real node processes: refusals, hostile
//! frames, unreachable nodes, nodes killed or frozen mid-batch.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::{
    ControlClient, LocalTransport, ReadRequest, RegionId, TcpTransport, Transport, TransportError,
};
use seqfeed_wire::{hello, Frame, ReadBatch, WireRead};

fn start(root: &std::path::Path, secret: Option<&str>) -> seqfeed_node::NodeHandle {
    let mut c = NodeConfig::new(root, "127.0.0.1:0".parse().unwrap());
    c.node_name = "node-f".into();
    c.secret = secret.map(Into::into);
    c.idle_timeout = Duration::from_millis(700);
    Node::start(c).unwrap()
}

#[test]
fn wrong_secret_or_fingerprint_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = start(dir.path(), Some("open sesame"));
    let addr = node.local_addr();
    let fp = node.fingerprint().to_owned();
    let cases = [
        (None, Some(fp.clone()), "requires a shared secret"),
        (Some("guess"), Some(fp.clone()), "wrong shared secret"),
        (
            Some("open sesame"),
            Some("0123".to_string()),
            "fingerprint mismatch",
        ),
    ];
    for (secret, fingerprint, want) in cases {
        let mut o = common::opts(2);
        o.secret = secret.map(Into::into);
        o.expected_fingerprint = fingerprint;
        let t0 = Instant::now();
        let e = TcpTransport::connect(addr, &o).unwrap_err();
        assert!(
            matches!(&e, TransportError::Refused { reason, .. } if reason.contains(want)),
            "{e}"
        );
        assert!(e.to_string().contains("node-f"), "{e}");
        // A refusal is final: no retries with backoff.
        assert!(t0.elapsed() < Duration::from_millis(500));
    }
    let mut o = common::opts(2);
    o.secret = Some("open sesame".into());
    o.expected_fingerprint = Some(fp);
    let mut t = TcpTransport::connect(addr, &o).unwrap();
    let mut dst = [0u8; 8];
    t.read_batch(
        &[ReadRequest {
            region: RegionId(0),
            offset: 0,
            len: 8,
            dst_offset: 0,
        }],
        &mut dst,
    )
    .unwrap();
    let st = node.stats().node;
    assert_eq!(st.refused, 3);
    assert_eq!(st.errors, 0);
    assert_eq!(st.batches, 1);
}

/// Sends `bytes` on a fresh connection and returns what the node sent
/// back before closing the connection (must close within 3 s).
fn hostile(addr: SocketAddr, bytes: &[u8]) -> Vec<Frame> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    loop {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "node did not close the connection: {e} after {:?}",
                t0.elapsed()
            ),
        }
    }
    let mut r = seqfeed_wire::FrameReader::new(seqfeed_wire::Limits::DEFAULT);
    r.feed(&got);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = r.next_frame() {
        frames.push(f);
    }
    frames
}

#[test]
fn hostile_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = start(dir.path(), None);
    let addr = node.local_addr();

    // A well-behaved client reads continuously, checked against the mapping.
    let stop = Arc::new(AtomicBool::new(false));
    let good_batches = Arc::new(AtomicU64::new(0));
    let reader = {
        let stop = Arc::clone(&stop);
        let good = Arc::clone(&good_batches);
        let root = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut tcp = TcpTransport::connect(addr, &common::opts(2)).unwrap();
            let files: Vec<String> = tcp.regions().iter().map(|r| r.name.clone()).collect();
            let mut local = LocalTransport::open(&root, &files).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            while !stop.load(Ordering::SeqCst) {
                let (reads, len) = common::random_batch(&mut rng, local.regions(), 64, 16_384);
                let mut want = vec![0u8; len];
                local.read_batch(&reads, &mut want).unwrap();
                let mut got = vec![0u8; len];
                tcp.read_batch(&reads, &mut got).unwrap();
                assert_eq!(got, want);
                good.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let hello_bytes = Frame::Hello(hello("evil", None)).to_bytes();
    let with_hello = |f: Vec<u8>| [hello_bytes.clone(), f].concat();
    let batch = |region, offset, len| {
        Frame::ReadBatch(ReadBatch {
            id: 1,
            reads: vec![WireRead {
                region: RegionId(region),
                offset,
                len,
            }],
        })
        .to_bytes()
    };
    let n_regions = node.regions().len() as u32;
    let len0 = node.regions()[0].len;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "unknown frame kind",
        ),
        (
            "huge length",
            [&u32::MAX.to_le_bytes()[..], &[4]].concat(),
            "frame length",
        ),
        ("read before hello", batch(0, 0, 1), "expected Hello"),
        (
            "unknown region",
            with_hello(batch(n_regions, 0, 1)),
            "has no region",
        ),
        (
            "read past the end",
            with_hello(batch(0, len0 - 1, 2)),
            "length",
        ),
        (
            "offset overflow",
            with_hello(batch(0, u64::MAX, 2)),
            "offset",
        ),
        (
            "node frame from a client",
            with_hello(Frame::ReadData { id: 1, total: 0 }.to_bytes()),
            "unexpected ReadData",
        ),
        (
            "huge batch",
            with_hello(
                Frame::ReadBatch(ReadBatch {
                    id: 1,
                    reads: vec![
                        WireRead {
                            region: RegionId(0),
                            offset: 0,
                            len: u32::MAX,
                        };
                        2
                    ],
                })
                .to_bytes(),
            ),
            "batch bytes",
        ),
        (
            "truncated then idle",
            with_hello(batch(0, 0, 1)[..9].to_vec()),
            "",
        ),
    ];
    let n_cases = cases.len() as u64;
    for (name, bytes, want) in cases {
        let frames = hostile(addr, &bytes);
        if want.is_empty() {
            // Idle with half a frame: closed by the idle timeout.
            assert!(
                frames.iter().all(|f| matches!(f, Frame::Welcome(_))),
                "{name}: {frames:?}"
            );
            continue;
        }
        let last = frames.last().unwrap_or_else(|| panic!("{name}: no answer"));
        assert!(
            matches!(last, Frame::Error { message, .. } if message.contains(want)),
            "{name}: {last:?}"
        );
    }
    // A client idling between requests (longer than the timeout for
    // unfinished frames) is not disconnected.
    let mut idle = ControlClient::connect(addr, &common::opts(1)).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(idle.health().is_ok());
    drop(idle);
    // The good client kept reading the whole time, and still does.
    let before = good_batches.load(Ordering::SeqCst);
    let t0 = Instant::now();
    while good_batches.load(Ordering::SeqCst) < before + 5 && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(good_batches.load(Ordering::SeqCst) >= before + 5);
    let st = node.stats().node;
    assert_eq!(st.errors, n_cases, "{st:?}");
    // Every hostile connection is gone; only the good client's were open.
    assert_eq!(st.connections_total, n_cases + 3);
}

#[test]
fn unreachable_node_retries_then_fails_clearly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut o = common::opts(1);
    o.retries = 3;
    o.backoff = Duration::from_millis(50);
    let t0 = Instant::now();
    let e = TcpTransport::connect(addr, &o).unwrap_err();
    let took = t0.elapsed();
    let msg = e.to_string();
    assert!(e.is_node_failure());
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("gave up after 4 attempts"),
        "{msg}"
    );
    // 50 + 100 + 200 ms of backoff, and no more than a few seconds.
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A node that comes up during the retries is reached.
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let root = dir.path().to_owned();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut c = NodeConfig::new(&root, addr);
        c.node_name = "late".into();
        Node::start(c).unwrap()
    });
    let mut o = common::opts(1);
    o.retries = 8;
    o.backoff = Duration::from_millis(100);
    let c = ControlClient::connect(addr, &o).unwrap();
    assert_eq!(c.welcome().node, "late");
    drop(c);
    starter.join().unwrap().shutdown();
}

/// A node in its own process, killed when dropped.
struct ChildNode {
    child: Child,
    addr: SocketAddr,
}

impl ChildNode {
    fn spawn(root: &std::path::Path) -> ChildNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seqfeed-node"))
            .arg(root)
            .arg("127.0.0.1:0")
            .env("SEQFEED_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .parse()
            .unwrap();
        ChildNode { child, addr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads big batches in a loop until one fails; returns the error and
/// when it came.
fn read_until_error(
    mut t: TcpTransport,
) -> std::thread::JoinHandle<(TransportError, Instant, u64)> {
    std::thread::spawn(move || {
        let regions = t.regions().to_vec();
        // 2048 reads of 16 KiB = 32 MiB per batch.
        let reads: Vec<ReadRequest> = (0..2048u64)
            .map(|i| {
                let r = &regions[(i as usize) % regions.len()];
                ReadRequest {
                    region: r.id,
                    offset: (i * 4096) % (r.len - 16384),
                    len: 16384,
                    dst_offset: i * 16384,
                }
            })
            .collect();
        let mut dst = vec![0u8; 2048 * 16384];
        let mut ok = 0;
        loop {
            match t.read_batch(&reads, &mut dst) {
                Ok(_) => ok += 1,
                Err(e) => return (e, Instant::now(), ok),
            }
            assert!(ok < 100_000, "never failed");
        }
    })
}

#[test]
fn node_killed_mid_batch_gives_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = ChildNode::spawn(dir.path());
    let mut o = common::opts(4);
    o.receive_threads = 2;
    let t = TcpTransport::connect(node.addr, &o).unwrap();
    let h = read_until_error(t);
    std::thread::sleep(Duration::from_millis(400));
    let killed = Instant::now();
    node.signal("KILL");
    let (e, at, ok) = h.join().unwrap();
    assert!(ok > 0, "no batch completed before the kill");
    assert!(e.is_node_failure(), "{e}");
    assert!(e.to_string().contains(&node.addr.to_string()), "{e}");
    // The socket breaks at once; reconnecting is refused at once.
    assert!(at.duration_since(killed) < Duration::from_secs(2), "{e}");
}

#[test]
fn frozen_node_times_out_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = ChildNode::spawn(dir.path());
    let mut o = common::opts(2);
    o.io_timeout = Duration::from_millis(800);
    let t = TcpTransport::connect(node.addr, &o).unwrap();
    let h = read_until_error(t);
    std::thread::sleep(Duration::from_millis(300));
    let frozen = Instant::now();
    node.signal("STOP");
    let (e, at, _) = h.join().unwrap();
    node.signal("CONT");
    let waited = at.duration_since(frozen);
    assert!(e.is_node_failure(), "{e}");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "{waited:?} {e}"
    );
}

#[test]
fn node_process_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut node = ChildNode::spawn(dir.path());
    let mut c = ControlClient::connect(node.addr, &common::opts(1)).unwrap();
    assert!(c.health().is_ok());
    node.signal("TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // The open connection was closed by the node.
    assert!(c.health().is_err());
}
