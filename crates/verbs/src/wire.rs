//! The bridge to the storage node's real control service: QP endpoints
//! carried in [`seqfeed_wire::VerbsConnect`] / [`seqfeed_wire::VerbsAccept`]
//! frames over a [`ControlClient`], and the node-side [`WireAcceptor`] that
//! answers them from the node's mapped [`RegionTable`].

use std::sync::{Arc, Mutex};

use seqfeed_transport::tcp::{ConnectOptions, ControlClient};
use seqfeed_transport::{RegionId, RegionInfo, RegionTable, TransportError};
use seqfeed_wire::{Frame, RegionKey, VerbsAccept, VerbsConnect};

use crate::client::{ClientOptions, VerbsTransport};
use crate::endpoint::{Accepted, QpEndpoint, QpExchange};
use crate::error::VerbsError;
use crate::fabric::FabricSettings;
use crate::qpbook::{QpBook, QpLimits};
use crate::server::{ServedQp, ServedRegion, VerbsServer};

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
        replaces: &[u32],
    ) -> Result<Accepted, TransportError> {
        let req = Frame::VerbsConnect(VerbsConnect {
            qps: qps.iter().map(to_wire).collect(),
            device: device.to_string(),
            rail,
            replaces: replaces.to_vec(),
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
        let mut client = ControlClient::connect(addr, copts)?;
        let node = client.node().to_string();
        let mut vopts = vopts;
        if vopts.cm_addr.is_none() {
            // rdma_cm falls back to the control address's host when a node's
            // grant names no address (InfiniBand GIDs are no IP addresses).
            vopts.cm_addr = client.stream_mut().peer_addr().ok().map(|a| a.ip());
        }
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

/// The node side of `VerbsConnect`: a [`VerbsServer`] over the node's
/// mapped files. The storage node calls [`WireAcceptor::accept`] for each
/// request and [`WireAcceptor::disconnected`] when a control connection
/// that made requests closes (both on a blocking thread). QPs are held per
/// connection in a [`QpBook`]: a request's `replaces` destroys the named
/// QPs of that connection at once, each connection has a quota, and the
/// node-wide cap refuses new QPs instead of evicting anyone's.
pub struct WireAcceptor {
    server: VerbsServer,
    kept: Mutex<QpBook<ServedQp>>,
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
    /// Starts the node's rdma_cm listener on `addr` (see
    /// [`VerbsServer::listen_cm`]); returns its port.
    pub fn listen_cm(&mut self, addr: std::net::SocketAddr) -> Result<u16, VerbsError> {
        self.server.listen_cm(addr)
    }

    /// The rdma_cm listener's port, when it listens.
    pub fn cm_port(&self) -> Option<u16> {
        self.server.cm_port()
    }

    /// Registers every region of `table` (remote read only) on the named
    /// devices, or on every device with an ACTIVE port.
    pub fn from_table(
        table: &Arc<RegionTable>,
        devices: Option<&[String]>,
    ) -> Result<WireAcceptor, VerbsError> {
        WireAcceptor::from_table_with(table, devices, &FabricSettings::DEFAULT)
    }

    /// [`WireAcceptor::from_table`] with fabric settings for every QP it
    /// accepts.
    pub fn from_table_with(
        table: &Arc<RegionTable>,
        devices: Option<&[String]>,
        fabric: &FabricSettings,
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
        let server = VerbsServer::open_with(devices, fabric, regions)?;
        tracing::info!(
            devices = ?server.devices().iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            regions = table.len(),
            "verbs enabled on this node"
        );
        Ok(WireAcceptor {
            server,
            kept: Mutex::new(QpBook::new()),
        })
    }

    /// The underlying server.
    pub fn server(&self) -> &VerbsServer {
        &self.server
    }

    /// Accepted QPs alive now (all connections).
    pub fn kept_qps(&self) -> usize {
        self.kept.lock().map(|k| k.total()).unwrap_or(0)
    }

    /// Connects the node's side of `req`'s queue pairs for control
    /// connection `conn` (a number unique per connection) on the node device
    /// of `req.rail`; `client` names the client in errors and logs. First
    /// destroys the connection's QPs named in `req.replaces`; refuses a
    /// request that would take the connection past `limits.per_connection`
    /// or the node past `limits.node`. The QPs stay alive until replaced or
    /// until [`WireAcceptor::disconnected`]`(conn)`.
    pub fn accept(
        &self,
        conn: u64,
        client: &str,
        req: &VerbsConnect,
        limits: &QpLimits,
    ) -> Result<VerbsAccept, String> {
        let qps: Vec<QpEndpoint> = req.qps.iter().map(from_wire).collect();
        let n = qps.len();
        let (replaced, room) = match self.kept.lock() {
            Ok(mut k) => k.begin(conn, &req.replaces, n, limits),
            // A poisoned lock (a panic elsewhere): refuse rather than leak.
            Err(_) => return Err(format!("client {client}: verbs acceptor state poisoned")),
        };
        // Destroyed here, outside the lock, before the new ones are made.
        let gone = replaced.len();
        drop(replaced);
        if gone > 0 {
            tracing::debug!(client, conn, qps = gone, "verbs: destroyed replaced QPs");
        }
        room.map_err(|e| {
            format!(
                "client {client}: refused {n} QPs on node device {} (rail {}): {e}",
                self.server.rail_device(req.rail),
                req.rail
            )
        })?;
        let (acc, keep) = match self.server.accept(&req.device, req.rail, &qps) {
            Ok(r) => r,
            Err(e) => {
                if let Ok(mut k) = self.kept.lock() {
                    k.cancel(conn, n);
                }
                return Err(format!("client {client}: {e}"));
            }
        };
        match self.kept.lock() {
            Ok(mut k) => k.commit(conn, n, keep.into_qps()),
            Err(_) => return Err(format!("client {client}: verbs acceptor state poisoned")),
        }
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
        let qps = match self.kept.lock() {
            Ok(mut k) => k.remove_conn(conn),
            Err(_) => return 0,
        };
        let n = qps.len();
        // Destroyed here, outside the lock.
        drop(qps);
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
