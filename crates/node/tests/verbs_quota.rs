//! Issue 10 item 2, the QP lifecycle on the node, through its real control
//! service on 127.0.0.1 (no RDMA device: the acceptor is a double that
//! keeps counted fake QPs in the same [`QpBook`] the real acceptor uses):
//! a rebuilt QP names the node QP it replaces and that one is destroyed at
//! once, `NodeConfig::verbs_qp_limits` reaches the acceptor, a connection
//! past its quota and a node past its cap are refused with messages naming
//! the limit, and no other connection's QPs are touched.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_node::{ClientId, Node, NodeConfig, NodeHandle, QpLimits, VerbsAcceptor};
use seqfeed_transport::{ControlClient, TransportError};
use seqfeed_verbs::QpBook;
use seqfeed_wire::{Frame, QpEndpoint, VerbsAccept, VerbsConnect};

/// A fake node QP: counts its destruction.
struct FakeQp(Arc<AtomicUsize>);

impl Drop for FakeQp {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Keeps fake QPs per connection in a [`QpBook`], as `WireAcceptor` does.
struct BookAcceptor {
    book: Mutex<QpBook<FakeQp>>,
    next_qpn: AtomicU32,
    destroyed: Arc<AtomicUsize>,
    /// Limits seen in the last call (must be the node's config).
    seen: Mutex<Option<QpLimits>>,
}

impl VerbsAcceptor for BookAcceptor {
    fn accept(
        &self,
        id: ClientId,
        client: &str,
        req: &VerbsConnect,
        limits: &QpLimits,
    ) -> Result<VerbsAccept, String> {
        *self.seen.lock().unwrap() = Some(*limits);
        let n = req.qps.len();
        let (gone, room) = self
            .book
            .lock()
            .unwrap()
            .begin(id.0, &req.replaces, n, limits);
        drop(gone);
        room.map_err(|e| format!("client {client}: {e}"))?;
        let qps: Vec<QpEndpoint> = req
            .qps
            .iter()
            .map(|q| QpEndpoint {
                qp_num: self.next_qpn.fetch_add(1, SeqCst),
                ..*q
            })
            .collect();
        let fakes = qps
            .iter()
            .map(|q| (q.qp_num, FakeQp(Arc::clone(&self.destroyed))))
            .collect();
        self.book.lock().unwrap().commit(id.0, n, fakes);
        Ok(VerbsAccept {
            qps,
            regions: vec![],
        })
    }

    fn disconnected(&self, id: ClientId) {
        let gone = self.book.lock().unwrap().remove_conn(id.0);
        drop(gone);
    }

    fn open_qps(&self) -> Option<usize> {
        Some(self.book.lock().unwrap().total())
    }
}

fn start(root: &std::path::Path, limits: QpLimits) -> (NodeHandle, Arc<BookAcceptor>) {
    let acc = Arc::new(BookAcceptor {
        book: Mutex::new(QpBook::new()),
        next_qpn: AtomicU32::new(0x100),
        destroyed: Arc::new(AtomicUsize::new(0)),
        seen: Mutex::new(None),
    });
    let mut cfg = NodeConfig::new(root, "127.0.0.1:0".parse().unwrap());
    cfg.node_name = "node-q".into();
    cfg.verbs_qp_limits = limits;
    let a = Arc::clone(&acc);
    cfg.verbs = Some(Arc::new(
        move |_table: &Arc<seqfeed_transport::RegionTable>| {
            Ok(Arc::clone(&a) as Arc<dyn VerbsAcceptor>)
        },
    ));
    (Node::start(cfg).unwrap(), acc)
}

/// Asks for `n` QPs (rail 0) replacing `replaces`; the node's QP numbers.
fn ask(c: &mut ControlClient, n: u32, replaces: &[u32]) -> Result<Vec<u32>, TransportError> {
    let req = Frame::VerbsConnect(VerbsConnect {
        qps: (0..n)
            .map(|i| QpEndpoint {
                qp_num: 10 + i,
                psn: i,
                gid: [2; 16],
                lid: 0,
                mtu: 3,
                rd_atomic: 8,
            })
            .collect(),
        device: "fake0".into(),
        rail: 0,
        replaces: replaces.to_vec(),
    });
    match c.request(&req)? {
        Frame::VerbsAccept(a) => Ok(a.qps.iter().map(|q| q.qp_num).collect()),
        f => panic!("expected VerbsAccept, got {f:?}"),
    }
}

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

#[test]
fn a_thousand_rebuilds_replace_and_leave_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let (node, acc) = start(dir.path(), QpLimits::DEFAULT);
    let mut a = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let mut b = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let mut lanes = ask(&mut a, 2, &[]).unwrap();
    let b_qps = ask(&mut b, 2, &[]).unwrap();
    assert_eq!(node.verbs_open_qps(), Some(4));
    // B keeps working on its own connection while A rebuilds 1,000 times.
    let other = std::thread::spawn(move || {
        let mut held = b_qps;
        for _ in 0..200 {
            held = ask(&mut b, 2, &held).unwrap();
        }
        (b, held)
    });
    let mut peak = 0;
    for i in 0..1000 {
        let lane = i % 2;
        let new = ask(&mut a, 1, &[lanes[lane]]).unwrap();
        lanes[lane] = new[0];
        peak = peak.max(node.verbs_open_qps().unwrap());
    }
    let (b, b_held) = other.join().unwrap();
    // A replacement frees the old QP before the new one is counted.
    assert!(peak <= 4, "node held up to {peak} QPs (2 per client)");
    assert_eq!(node.verbs_open_qps(), Some(4));
    assert_eq!(
        acc.destroyed.load(SeqCst),
        1000 + 400,
        "each replaced QP destroyed at once"
    );
    assert_eq!(*acc.seen.lock().unwrap(), Some(QpLimits::DEFAULT));
    // A naming B's QPs as replaced destroys nothing of B's.
    let _ = ask(&mut a, 1, &b_held).unwrap();
    assert_eq!(node.verbs_open_qps(), Some(5));
    assert_eq!(acc.destroyed.load(SeqCst), 1400);
    drop(a);
    assert_eq!(
        wait_open(&node, 2),
        Some(2),
        "A's three QPs go with it; B's two stay"
    );
    drop(b);
    assert_eq!(wait_open(&node, 0), Some(0));
    node.shutdown();
}

#[test]
fn quota_and_node_cap_refuse_by_name_without_evicting() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let limits = QpLimits {
        per_connection: 4,
        node: 10,
    };
    let (node, acc) = start(dir.path(), limits);
    let mut a = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let held = ask(&mut a, 4, &[]).unwrap();
    let e = ask(&mut a, 1, &[]).unwrap_err().to_string();
    assert!(
        e.contains("quota of 4 QPs per connection") && e.contains("holds 4 QPs"),
        "{e}"
    );
    assert_eq!(*acc.seen.lock().unwrap(), Some(limits));
    // The connection still works: a replacement within the quota.
    let _ = ask(&mut a, 1, &held[..1]).unwrap();
    let mut b = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let _ = ask(&mut b, 4, &[]).unwrap();
    let mut c = ControlClient::connect(node.local_addr(), &common::opts(1)).unwrap();
    let e = ask(&mut c, 4, &[]).unwrap_err().to_string();
    assert!(
        e.contains("cap of 10") && e.contains("no other connection's QPs are evicted"),
        "{e}"
    );
    // Nobody's QPs were evicted to make room: A and B hold theirs.
    assert_eq!(node.verbs_open_qps(), Some(8));
    assert_eq!(acc.destroyed.load(SeqCst), 1, "only A's replaced QP");
    let _ = ask(&mut c, 2, &[]).unwrap();
    assert_eq!(node.verbs_open_qps(), Some(10));
    drop(a);
    assert_eq!(wait_open(&node, 6), Some(6));
    let _ = ask(&mut c, 2, &[]).unwrap();
    assert_eq!(node.verbs_open_qps(), Some(8));
    node.shutdown();
}
