//! The bridge to the storage node's real control service: QP endpoints
//! carried in [`seqfeed_wire::VerbsConnect`] / [`seqfeed_wire::VerbsAccept`]
//! frames over a [`ControlClient`], and the node-side [`WireAcceptor`] that
//! answers them from the node's mapped [`RegionTable`].

use std::collections::VecDeque;
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
    }
}

fn from_wire(q: &seqfeed_wire::QpEndpoint) -> QpEndpoint {
    // The wire frame carries no read depth: 0 = "use the local device's".
    QpEndpoint {
        qp_num: q.qp_num,
        psn: q.psn,
        gid: q.gid,
        lid: q.lid,
        mtu: q.mtu,
        rd_atom: 0,
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

/// Most accepted QPs a node keeps; beyond it the oldest connections' QPs
/// are destroyed (a client still using one sees a QP error, rebuilds it and
/// retries). The node's control service does not yet tell the acceptor when
/// a client disconnects, so this bound is what reclaims QPs of gone clients.
pub const MAX_KEPT_QPS: usize = 16384;

/// The node side of `VerbsConnect`: a [`VerbsServer`] over the node's
/// mapped files. The storage node calls [`WireAcceptor::accept`] for each
/// request (on a blocking thread).
pub struct WireAcceptor {
    server: VerbsServer,
    kept: Mutex<(usize, VecDeque<(usize, ServerQps)>)>,
}

impl std::fmt::Debug for WireAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireAcceptor")
            .field("server", &self.server)
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
            kept: Mutex::new((0, VecDeque::new())),
        })
    }

    /// The underlying server.
    pub fn server(&self) -> &VerbsServer {
        &self.server
    }

    /// Connects the node's side of `req`'s queue pairs; `client` names the
    /// client in errors and logs. The QPs stay alive (up to
    /// [`MAX_KEPT_QPS`] in total, oldest destroyed first).
    pub fn accept(&self, client: &str, req: &VerbsConnect) -> Result<VerbsAccept, String> {
        let qps: Vec<QpEndpoint> = req.qps.iter().map(from_wire).collect();
        let (acc, keep) = self
            .server
            .accept(&req.device, 0, &qps)
            .map_err(|e| format!("client {client}: {e}"))?;
        let n = acc.qps.len();
        if let Ok(mut k) = self.kept.lock() {
            k.0 += n;
            k.1.push_back((n, keep));
            while k.0 > MAX_KEPT_QPS {
                match k.1.pop_front() {
                    Some((m, _old)) => k.0 -= m,
                    None => break,
                }
            }
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
