//! The verbs acceptor learns when a control connection that asked for
//! queue pairs closes, whatever the way it closes: a clean close, a killed
//! client process, an unfinished frame timing out, the node shutting down.
//! Real sockets on 127.0.0.1 and a real killed child process; the acceptor
//! is a fake that records its calls (no RDMA device needed).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_node::{ClientId, Node, NodeConfig, NodeHandle, VerbsAcceptor};
use seqfeed_transport::ControlClient;
use seqfeed_wire::{hello, Frame, FrameReader, Limits, QpEndpoint, VerbsAccept, VerbsConnect};

/// Env var that turns this test binary into the child client of
/// `killed_client_releases_its_qps`: it holds the node's address.
const CHILD_ENV: &str = "SEQFEED_NODE_TEST_VERBS_CHILD";

#[derive(Default)]
struct Calls {
    /// Per connection: accepted requests (successful accept calls).
    accepts: BTreeMap<ClientId, usize>,
    /// Connection of every disconnected call, in call order.
    disconnects: Vec<ClientId>,
    /// A call for a connection after its disconnect (must never happen).
    late: Vec<String>,
    /// QPs held per connection (accepted, not yet released).
    held: BTreeMap<ClientId, usize>,
}

/// A fake acceptor recording each call.
#[derive(Default)]
struct Recorder(Mutex<Calls>);

impl VerbsAcceptor for Recorder {
    fn accept(
        &self,
        id: ClientId,
        client: &str,
        req: &VerbsConnect,
        _limits: &seqfeed_node::QpLimits,
    ) -> Result<VerbsAccept, String> {
        let mut c = self.0.lock().unwrap();
        if c.disconnects.contains(&id) {
            c.late.push(format!("accept for {id} after its disconnect"));
        }
        if req.device == "fail" {
            return Err(format!("{client}: refused on purpose"));
        }
        *c.accepts.entry(id).or_default() += 1;
        *c.held.entry(id).or_default() += req.qps.len();
        Ok(VerbsAccept {
            qps: req
                .qps
                .iter()
                .map(|q| QpEndpoint {
                    qp_num: q.qp_num + 1000,
                    rd_atomic: 16,
                    ..*q
                })
                .collect(),
            regions: vec![],
        })
    }

    fn disconnected(&self, id: ClientId) {
        let mut c = self.0.lock().unwrap();
        if c.disconnects.contains(&id) {
            c.late.push(format!("second disconnect for {id}"));
        }
        c.disconnects.push(id);
        c.held.remove(&id);
    }

    fn open_qps(&self) -> Option<usize> {
        Some(self.0.lock().unwrap().held.values().sum())
    }
}

impl Recorder {
    fn snapshot(&self) -> (BTreeMap<ClientId, usize>, Vec<ClientId>, Vec<String>) {
        let c = self.0.lock().unwrap();
        (c.accepts.clone(), c.disconnects.clone(), c.late.clone())
    }

    /// Waits (bounded) until `n` disconnects were recorded.
    fn wait_disconnects(&self, n: usize) -> Vec<ClientId> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.snapshot().1;
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn start(root: &std::path::Path, rec: &Arc<Recorder>, idle: Duration) -> NodeHandle {
    let mut cfg = NodeConfig::new(root, "127.0.0.1:0".parse().unwrap());
    cfg.node_name = "node-v".into();
    cfg.idle_timeout = idle;
    let rec = Arc::clone(rec);
    cfg.verbs = Some(Arc::new(
        move |_table: &Arc<seqfeed_transport::RegionTable>| {
            Ok(Arc::clone(&rec) as Arc<dyn VerbsAcceptor>)
        },
    ));
    Node::start(cfg).unwrap()
}

fn connect_req(device: &str, qps: u32) -> Frame {
    Frame::VerbsConnect(VerbsConnect {
        qps: (0..qps)
            .map(|i| QpEndpoint {
                qp_num: 10 + i,
                psn: i,
                gid: [2; 16],
                lid: 0,
                mtu: 3,
                rd_atomic: 8,
            })
            .collect(),
        device: device.into(),
        rail: 0,
        replaces: vec![],
    })
}

/// Asks for `qps` queue pairs over `c` and checks the (fake) answer.
fn ask(c: &mut ControlClient, qps: u32) {
    match c.request(&connect_req("rxe0", qps)).unwrap() {
        Frame::VerbsAccept(a) => {
            assert_eq!(a.qps.len(), qps as usize);
            assert!(a.qps.iter().all(|q| q.rd_atomic == 16 && q.qp_num >= 1010));
        }
        f => panic!("expected VerbsAccept, got {f:?}"),
    }
}

/// Reads one frame from a raw socket (bounded by the socket's timeout).
fn read_frame(s: &mut TcpStream, r: &mut FrameReader) -> Frame {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = r.next_frame().unwrap() {
            return f;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "node closed the connection");
        r.feed(&buf[..n]);
    }
}

/// A raw client: handshake, one accepted VerbsConnect; returns the socket.
fn raw_verbs_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = FrameReader::new(Limits::DEFAULT);
    s.write_all(&Frame::Hello(hello("raw", None)).to_bytes())
        .unwrap();
    assert!(matches!(read_frame(&mut s, &mut r), Frame::Welcome(_)));
    s.write_all(&connect_req("rxe0", 2).to_bytes()).unwrap();
    assert!(matches!(read_frame(&mut s, &mut r), Frame::VerbsAccept(_)));
    s
}

/// Child mode of the killed-client test: connect, get QPs, say READY, hang.
#[test]
fn child_client_mode() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return; // a normal test run: nothing to do
    };
    let mut c = ControlClient::connect(addr.as_str(), &common::opts(1)).unwrap();
    ask(&mut c, 3);
    println!("CHILD-READY");
    std::io::stdout().flush().unwrap();
    // Killed by the parent long before this ends.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn clean_close_and_errors_release_each_connection_once() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let rec = Arc::new(Recorder::default());
    let node = start(dir.path(), &rec, Duration::from_millis(400));
    let addr = node.local_addr();

    // 1. Clean close after two accepted requests: one disconnect.
    let mut a = ControlClient::connect(addr, &common::opts(1)).unwrap();
    ask(&mut a, 2);
    ask(&mut a, 1);
    // 2. A connection that never asks for QPs: no disconnect for it.
    let mut plain = ControlClient::connect(addr, &common::opts(1)).unwrap();
    plain.health().unwrap();
    // 3. A connection whose only request failed: released as well (the
    //    acceptor may have had partial state), still exactly once.
    let mut failed = ControlClient::connect(addr, &common::opts(1)).unwrap();
    let e = failed.request(&connect_req("fail", 1)).unwrap_err();
    assert!(e.to_string().contains("refused on purpose"), "{e}");
    // 4. A protocol error after accepting: the node closes the connection.
    let mut bad = raw_verbs_client(addr);
    bad.write_all(&[0, 0, 0, 0, 200]).unwrap(); // unknown frame kind
                                                // 5. An unfinished frame after accepting: closed by the idle timeout.
    let mut stalled = raw_verbs_client(addr);
    stalled.write_all(&[9, 0]).unwrap(); // half a header, then silence

    let (accepts, disconnects, _) = rec.snapshot();
    assert_eq!(accepts.len(), 3, "{accepts:?}");
    assert_eq!(accepts.values().sum::<usize>(), 4);
    // Nothing released while the clients are still connected: the bad
    // frame and the stall may already have closed theirs, `a` may not.
    let a_id = *accepts.iter().find(|(_, n)| **n == 2).unwrap().0;
    assert!(!disconnects.contains(&a_id), "{disconnects:?}");

    drop(a);
    drop(failed);
    // bad (protocol error) + stalled (timeout) + a + failed.
    let d = rec.wait_disconnects(4);
    assert_eq!(d.len(), 4, "{d:?}");
    let mut want: Vec<ClientId> = accepts.keys().copied().collect();
    // The failed connection asked too (accept was called, then refused).
    let mut got = d.clone();
    got.sort();
    let failed_id = got.iter().copied().find(|id| !accepts.contains_key(id));
    assert!(failed_id.is_some(), "{got:?} vs {want:?}");
    want.extend(failed_id);
    want.sort();
    assert_eq!(got, want, "each asking connection exactly once");
    // The plain connection is still open and was never reported.
    plain.health().unwrap();
    drop(plain);
    std::thread::sleep(Duration::from_millis(200));
    let (_, d, late) = rec.snapshot();
    assert_eq!(
        d.len(),
        4,
        "a connection without QPs is not reported: {d:?}"
    );
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(node.verbs_open_qps(), Some(0));
    // The stalled socket was closed by the node (read gives EOF or reset).
    stalled
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(stalled.read(&mut b), Ok(0) | Err(_)));
    let stats = node.stats();
    assert_eq!(stats.node.connections_open, 0);
    node.shutdown();
}

#[test]
fn killed_client_releases_its_qps() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let rec = Arc::new(Recorder::default());
    let node = start(dir.path(), &rec, Duration::from_secs(30));
    let addr = node.local_addr();
    // A live client that stays: it must not be released.
    let mut stay = ControlClient::connect(addr, &common::opts(1)).unwrap();
    ask(&mut stay, 1);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_client_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !line.contains("CHILD-READY") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 || Instant::now() > deadline {
            let _ = child.kill();
            panic!("child client did not get its QPs");
        }
    }
    let (accepts, d, _) = rec.snapshot();
    assert_eq!(accepts.len(), 2, "{accepts:?}");
    assert!(d.is_empty(), "{d:?}");
    assert!(node.verbs_enabled());
    assert_eq!(node.verbs_open_qps(), Some(1 + 3));
    // SIGKILL: the kernel closes the child's socket, no goodbye.
    child.kill().unwrap();
    child.wait().unwrap();
    let d = rec.wait_disconnects(1);
    assert_eq!(d.len(), 1, "{d:?}");
    let stay_id = *accepts.keys().min().unwrap(); // connected first
    let child_id = *accepts.keys().max().unwrap();
    assert_eq!(d, vec![child_id]);
    assert_eq!(
        node.verbs_open_qps(),
        Some(1),
        "the killed client's 3 QPs released"
    );
    // The survivor still works and is released only when it leaves.
    ask(&mut stay, 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rec.snapshot().1, vec![child_id]);
    assert_eq!(node.verbs_open_qps(), Some(3));
    drop(stay);
    let d = rec.wait_disconnects(2);
    assert_eq!(d, vec![child_id, stay_id]);
    assert_eq!(node.verbs_open_qps(), Some(0));
    assert!(rec.snapshot().2.is_empty());
    node.shutdown();
}

#[test]
fn node_shutdown_releases_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let rec = Arc::new(Recorder::default());
    let node = start(dir.path(), &rec, Duration::from_secs(30));
    let mut a = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let mut b = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    ask(&mut a, 1);
    ask(&mut b, 4);
    node.shutdown();
    let (accepts, d, late) = rec.snapshot();
    let mut d = d;
    d.sort();
    assert_eq!(d, accepts.keys().copied().collect::<Vec<_>>());
    assert!(late.is_empty(), "{late:?}");
}
