//! The bridge to the storage node's real control service: QP endpoints
//! carried in [`seqfeed_wire::VerbsConnect`] / [`seqfeed_wire::VerbsAccept`]
//! frames over a [`ControlClient`], and the node-side [`WireAcceptor`] that
//! answers them from the node's mapped [`RegionTable`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use seqfeed_transport::tcp::{ConnectOptions, ControlClient};
use seqfeed_transport::{RegionId, RegionInfo, RegionTable, TransportError};
use seqfeed_wire::{Frame, RegionKey, VerbsAccept, VerbsConnect};

use crate::client::{ClientOptions, VerbsTransport};
use crate::endpoint::{Accepted, QpEndpoint, QpExchange};
use crate::error::VerbsError;
use crate::server::{ServedRegion, ServerQps, VerbsServer};

fn to_wire(q: &QpEndpoint) -> seqfeed_wire::QpEndpoint {
    seqfeed_wire::QpEndpoint {
        qp_num: q.qp_num,
        psn: q.psn,
        gid: q.gid,
        lid: q.lid,
        mtu: q.mtu,
        rd_atomic: q.rd_atom,
    }
}

/// The wire endpoint as the verbs crate's; `rd_atom` carries the peer's
/// read depth (the client's initiator depth in a `VerbsConnect`, the node's
/// responder resources in a `VerbsAccept`; 0 = unknown).
fn from_wire(q: &seqfeed_wire::QpEndpoint) -> QpEndpoint {
    QpEndpoint {
        qp_num: q.qp_num,
        psn: q.psn,
        gid: q.gid,
        lid: q.lid,
        mtu: q.mtu,
        rd_atom: q.rd_atomic,
    }
}

/// Joins the handshake's region table (id, name, length) with a
/// `VerbsAccept`'s keys (id, address, rkey). Every region must have a key.
pub fn join_regions(
    table: &[RegionInfo],
    keys: &[RegionKey],
    node: &str,
) -> Result<Vec<RegionInfo>, TransportError> {
    let mut out = Vec::with_capacity(table.len());
    for r in table {
        let Some(k) = keys.iter().find(|k| k.id == r.id) else {
            return Err(TransportError::Protocol {
                node: node.to_string(),
                what: format!("VerbsAccept has no address/rkey for {} ({})", r.id, r.name),
            });
        };
        out.push(RegionInfo {
            addr: k.addr,
            rkey: k.rkey,
            ..r.clone()
        });
    }
    Ok(out)
}

/// [`QpExchange`] over the node's control protocol (one [`ControlClient`]
/// connection, kept open: the node keeps our QPs for its lifetime).
#[derive(Debug)]
pub struct ControlExchange {
    client: ControlClient,
}

impl ControlExchange {
    /// Wraps a connected control client.
    pub fn new(client: ControlClient) -> ControlExchange {
        ControlExchange { client }
    }

    /// The node as `name (address)`.
    pub fn node(&self) -> &str {
        self.client.node()
    }
}

impl QpExchange for ControlExchange {
    fn connect(
        &mut self,
        rail: u32,
        device: &str,
        qps: &[QpEndpoint],
    ) -> Result<Accepted, TransportError> {
        let req = Frame::VerbsConnect(VerbsConnect {
            qps: qps.iter().map(to_wire).collect(),
            device: device.to_string(),
        });
        let node = self.client.node().to_string();
        match self.client.request(&req)? {
            Frame::VerbsAccept(VerbsAccept {
                qps: theirs,
                regions,
            }) => {
                if theirs.len() != qps.len() {
                    return Err(TransportError::Protocol {
                        node,
                        what: format!(
                            "VerbsAccept (rail {rail}) has {} QPs for {} asked",
                            theirs.len(),
                            qps.len()
                        ),
                    });
                }
                let regions = join_regions(&self.client.welcome().regions, &regions, &node)?;
                Ok(Accepted {
                    qps: theirs.iter().map(from_wire).collect(),
                    regions,
                })
            }
            f => Err(TransportError::Protocol {
                node,
                what: format!("expected VerbsAccept, got {}", f.name()),
            }),
        }
    }

    fn check_alive(&mut self) -> Result<(), TransportError> {
        self.client.health().map(|_| ())
    }
}

impl VerbsTransport {
    /// Connects to the storage node at `addr` through its control service
    /// (handshake with `copts`: name, secret, fingerprint) and brings up the
    /// verbs queue pairs with `vopts`.
    pub fn connect_node(
        addr: &str,
        copts: &ConnectOptions,
        vopts: ClientOptions,
    ) -> Result<VerbsTransport, TransportError> {
        let client = ControlClient::connect(addr, copts)?;
        let node = client.node().to_string();
        VerbsTransport::connect(node, Box::new(ControlExchange::new(client)), vopts)
    }
}

/// Keeps one mapped region of a [`RegionTable`] alive for its registration.
struct TableRegion {
    table: Arc<RegionTable>,
    id: RegionId,
}

impl AsRef<[u8]> for TableRegion {
    fn as_ref(&self) -> &[u8] {
        self.table.get(self.id).map(|m| m.bytes()).unwrap_or(&[])
    }
}

/// Most accepted QPs a node keeps, a safety bound: the node's control
/// service reports each closed connection ([`WireAcceptor::disconnected`])
/// and its QPs are destroyed then; should connections stay open with more
/// QPs than this, the oldest accepted QPs are destroyed first (a client
/// still using one sees a QP error, rebuilds it and retries).
pub const MAX_KEPT_QPS: usize = 16384;

/// Accepted QP sets (`T`: a [`ServerQps`]) by connection, oldest first,
/// bounded by a total QP count.
#[derive(Debug)]
struct Kept<T> {
    /// QPs held in total.
    total: usize,
    /// Accept sequence number -> (connection, QP count, the QPs).
    sets: BTreeMap<u64, (u64, usize, T)>,
    next: u64,
    cap: usize,
}

impl<T> Kept<T> {
    fn new(cap: usize) -> Self {
        Kept {
            total: 0,
            sets: BTreeMap::new(),
            next: 0,
            cap,
        }
    }

    /// Keeps `qps` (`n` QPs) for connection `conn`; returns the sets
    /// evicted (oldest first) to stay within the cap, to be dropped by the
    /// caller outside any lock.
    fn insert(&mut self, conn: u64, n: usize, qps: T) -> Vec<T> {
        self.sets.insert(self.next, (conn, n, qps));
        self.next += 1;
        self.total += n;
        let mut evicted = Vec::new();
        while self.total > self.cap {
            match self.sets.pop_first() {
                Some((_, (_, m, old))) => {
                    self.total -= m;
                    evicted.push(old);
                }
                None => break,
            }
        }
        evicted
    }

    /// Takes every set of connection `conn` out (QP count, the sets).
    fn remove_conn(&mut self, conn: u64) -> (usize, Vec<T>) {
        let keys: Vec<u64> = self
            .sets
            .iter()
            .filter(|(_, (c, _, _))| *c == conn)
            .map(|(k, _)| *k)
            .collect();
        let mut n = 0;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((_, m, qps)) = self.sets.remove(&k) {
                n += m;
                out.push(qps);
            }
        }
        self.total -= n;
        (n, out)
    }
}

/// The node side of `VerbsConnect`: a [`VerbsServer`] over the node's
/// mapped files. The storage node calls [`WireAcceptor::accept`] for each
/// request and [`WireAcceptor::disconnected`] when a control connection
/// that made requests closes (both on a blocking thread).
pub struct WireAcceptor {
    server: VerbsServer,
    kept: Mutex<Kept<ServerQps>>,
}

impl std::fmt::Debug for WireAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireAcceptor")
            .field("server", &self.server)
            .field("kept_qps", &self.kept_qps())
            .finish()
    }
}

impl WireAcceptor {
    /// Registers every region of `table` (remote read only) on the named
    /// devices, or on every device with an ACTIVE port.
    pub fn from_table(
        table: &Arc<RegionTable>,
        devices: Option<&[String]>,
    ) -> Result<WireAcceptor, VerbsError> {
        let regions = table
            .infos()
            .iter()
            .map(|r| ServedRegion {
                id: r.id,
                name: r.name.clone(),
                data: Arc::new(TableRegion {
                    table: Arc::clone(table),
                    id: r.id,
                }),
            })
            .collect();
        let server = VerbsServer::open(devices, regions)?;
        tracing::info!(
            devices = ?server.devices().iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            regions = table.len(),
            "verbs enabled on this node"
        );
        Ok(WireAcceptor {
            server,
            kept: Mutex::new(Kept::new(MAX_KEPT_QPS)),
        })
    }

    /// The underlying server.
    pub fn server(&self) -> &VerbsServer {
        &self.server
    }

    /// Accepted QPs alive now (all connections).
    pub fn kept_qps(&self) -> usize {
        self.kept.lock().map(|k| k.total).unwrap_or(0)
    }

    /// Connects the node's side of `req`'s queue pairs for control
    /// connection `conn` (a number unique per connection); `client` names
    /// the client in errors and logs. The QPs stay alive until
    /// [`WireAcceptor::disconnected`]`(conn)` (or, past [`MAX_KEPT_QPS`] in
    /// total, until they are the oldest).
    pub fn accept(
        &self,
        conn: u64,
        client: &str,
        req: &VerbsConnect,
    ) -> Result<VerbsAccept, String> {
        let qps: Vec<QpEndpoint> = req.qps.iter().map(from_wire).collect();
        let (acc, keep) = self
            .server
            .accept(&req.device, 0, &qps)
            .map_err(|e| format!("client {client}: {e}"))?;
        let n = acc.qps.len();
        let evicted = match self.kept.lock() {
            Ok(mut k) => k.insert(conn, n, keep),
            // A poisoned lock (a panic elsewhere): refuse rather than leak.
            Err(_) => return Err(format!("client {client}: verbs acceptor state poisoned")),
        };
        if !evicted.is_empty() {
            tracing::warn!(
                client,
                sets = evicted.len(),
                cap = MAX_KEPT_QPS,
                "verbs: more accepted QPs than the cap; destroyed the oldest"
            );
        }
        drop(evicted);
        Ok(VerbsAccept {
            qps: acc.qps.iter().map(to_wire).collect(),
            regions: acc
                .regions
                .iter()
                .map(|r| RegionKey {
                    id: r.id,
                    addr: r.addr,
                    rkey: r.rkey,
                })
                .collect(),
        })
    }

    /// Control connection `conn` closed: destroys every QP accepted for it
    /// and returns how many.
    pub fn disconnected(&self, conn: u64) -> usize {
        let (n, sets) = match self.kept.lock() {
            Ok(mut k) => k.remove_conn(conn),
            Err(_) => return 0,
        };
        // Destroyed here, outside the lock.
        drop(sets);
        tracing::debug!(
            conn,
            qps = n,
            "verbs: destroyed the QPs of a closed connection"
        );
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_conversion_roundtrip() {
        let e = QpEndpoint {
            qp_num: 17,
            psn: 0x123456,
            gid: [9; 16],
            lid: 4,
            mtu: 5,
            rd_atom: 0,
        };
        assert_eq!(from_wire(&to_wire(&e)), e);
        // The read depth crosses the wire (a VerbsConnect / VerbsAccept frame).
        let deep = QpEndpoint { rd_atom: 128, ..e };
        let f = Frame::VerbsAccept(VerbsAccept {
            qps: vec![to_wire(&deep)],
            regions: vec![],
        });
        let b = f.to_bytes();
        match seqfeed_wire::decode(&b, &seqfeed_wire::Limits::DEFAULT).unwrap() {
            seqfeed_wire::Decoded::Frame {
                frame: Frame::VerbsAccept(a),
                ..
            } => assert_eq!(from_wire(&a.qps[0]), deep),
            d => panic!("{d:?}"),
        }
    }

    /// Counts drops of the sets it stands for.
    struct Set(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Set {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn kept_sets_freed_per_connection_and_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dropped = Arc::new(AtomicUsize::new(0));
        let set = || Set(Arc::clone(&dropped));
        let mut k = Kept::new(10);
        // Connection 1: two requests (3 + 2 QPs); connection 2: one (4 QPs).
        assert!(k.insert(1, 3, set()).is_empty());
        assert!(k.insert(2, 4, set()).is_empty());
        assert!(k.insert(1, 2, set()).is_empty());
        assert_eq!(k.total, 9);
        let (n, sets) = k.remove_conn(1);
        assert_eq!((n, sets.len()), (5, 2));
        assert_eq!(dropped.load(SeqCst), 0);
        drop(sets);
        assert_eq!(dropped.load(SeqCst), 2);
        assert_eq!(k.total, 4);
        // Unknown or already released connections release nothing.
        assert_eq!(k.remove_conn(1).0, 0);
        assert_eq!(k.remove_conn(7).0, 0);
        // The cap evicts oldest first: 4 (conn 2) + 5 (conn 3) + 3 (conn 4) > 10.
        assert!(k.insert(3, 5, set()).is_empty());
        let ev = k.insert(4, 3, set());
        assert_eq!(ev.len(), 1);
        drop(ev);
        assert_eq!(dropped.load(SeqCst), 3);
        assert_eq!(k.total, 8);
        assert_eq!(k.remove_conn(2).0, 0, "connection 2's set was the oldest");
        assert_eq!(k.remove_conn(3).0, 5);
        assert_eq!(k.remove_conn(4).0, 3);
        assert_eq!(k.total, 0);
        assert!(k.sets.is_empty());
        drop(k);
        assert_eq!(dropped.load(SeqCst), 5);
    }

    #[test]
    fn join_needs_every_region() {
        let table = vec![
            RegionInfo {
                id: RegionId(0),
                name: "a.seq".into(),
                len: 10,
                addr: 0,
                rkey: 0,
            },
            RegionInfo {
                id: RegionId(1),
                name: "b.seq".into(),
                len: 20,
                addr: 0,
                rkey: 0,
            },
        ];
        let keys = vec![
            RegionKey {
                id: RegionId(1),
                addr: 0x2000,
                rkey: 7,
            },
            RegionKey {
                id: RegionId(0),
                addr: 0x1000,
                rkey: 6,
            },
        ];
        let j = join_regions(&table, &keys, "n").unwrap();
        assert_eq!((j[0].addr, j[0].rkey, j[0].len), (0x1000, 6, 10));
        assert_eq!(
            (j[1].addr, j[1].rkey, j[1].name.as_str()),
            (0x2000, 7, "b.seq")
        );
        let e = join_regions(&table, &keys[..1], "n").unwrap_err();
        assert!(e.to_string().contains("region 0"), "{e}");
    }
}
