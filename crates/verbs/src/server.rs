//! Storage-node side: register the node's mapped sequence files as
//! remote-read-only memory regions on every device and accept queue-pair
//! connections. After that the data path needs no node CPU.

use std::sync::Arc;

use seqfeed_transport::{RegionId, RegionInfo};
use sideway::ibverbs::memory_region::MemoryRegion;

use crate::cm::{self, CmListener, CmSlot};
use crate::device::{open_devices_with, Nic};
use crate::endpoint::{read_depth, Accepted, QpEndpoint};
use crate::error::VerbsError;
use crate::fabric::FabricSettings;
use crate::pinning::{OdpPolicy, PinBudget, PinPlan};
use crate::raw::{Connect, Cq, Qp, ACCESS_REMOTE_READ};

/// Largest number of QPs one connect request may ask for.
pub const MAX_QPS_PER_CONNECT: usize = 64;

/// Memory the node serves as one region (usually a `memmap2::Mmap` of a
/// sequence file's payload). The server keeps it alive while registered.
pub struct ServedRegion {
    /// Region id (unique within the node).
    pub id: RegionId,
    /// What the region holds (the file's path relative to the dataset root).
    pub name: String,
    /// The bytes: the server reads `as_ref()` once to register them.
    pub data: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

struct ServerRail {
    nic: Arc<Nic>,
    cq: Arc<Cq>,
    /// Per region: the registration (None for empty regions).
    mrs: Vec<Option<Arc<MemoryRegion>>>,
}

/// The node's verbs service: memory regions on each device plus the QPs it
/// accepted. Shareable across the node's connection tasks (`Send + Sync`).
pub struct VerbsServer {
    rails: Vec<ServerRail>,
    /// rdma_cm listener, when QPs may also be connected with rdma_cm.
    cm: Option<CmListener>,
    regions: Vec<(RegionId, String, u64, usize)>, // id, name, len, ptr
    _data: Vec<Arc<dyn AsRef<[u8]> + Send + Sync>>,
}

impl std::fmt::Debug for VerbsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsServer")
            .field(
                "devices",
                &self
                    .rails
                    .iter()
                    .map(|r| r.nic.info.name.clone())
                    .collect::<Vec<_>>(),
            )
            .field("regions", &self.regions.len())
            .finish()
    }
}

/// QPs accepted for one connect request. Dropping it destroys them; the
/// node keeps them while the client's control connection lives, or until
/// the client replaces one ([`ServerQps::into_qps`] splits them).
pub struct ServerQps {
    qps: Vec<NodeQp>,
}

/// A node QP: connected through the control service, or granted for an
/// rdma_cm connect (the slot owns the QP and its cm connection).
enum NodeQp {
    Direct(Qp),
    Cm(Arc<CmSlot>),
}

impl NodeQp {
    fn qp_num(&self) -> u32 {
        match self {
            NodeQp::Direct(q) => q.qp_num(),
            NodeQp::Cm(s) => s.qp_num(),
        }
    }
}

impl std::fmt::Debug for ServerQps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerQps")
            .field("qps", &self.qps.len())
            .finish()
    }
}

impl ServerQps {
    /// The QPs one by one, each with its QP number (what the client names
    /// in `VerbsConnect::replaces`).
    pub fn into_qps(self) -> Vec<(u32, ServedQp)> {
        self.qps
            .into_iter()
            .map(|q| (q.qp_num(), ServedQp { _qp: q }))
            .collect()
    }
}

/// One accepted QP of the node; dropping it destroys it.
pub struct ServedQp {
    _qp: NodeQp,
}

impl std::fmt::Debug for ServedQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedQp")
            .field("qp_num", &self._qp.qp_num())
            .finish()
    }
}

impl VerbsServer {
    /// Opens the devices (all with an ACTIVE port, or those named) and
    /// registers every region on each of them.
    pub fn open(
        devices: Option<&[String]>,
        regions: Vec<ServedRegion>,
    ) -> Result<VerbsServer, VerbsError> {
        VerbsServer::open_with(devices, &FabricSettings::DEFAULT, regions)
    }

    /// [`VerbsServer::open`] with fabric settings (GID index, traffic class,
    /// service level, pkey index, port) for every QP it accepts.
    pub fn open_with(
        devices: Option<&[String]>,
        fabric: &FabricSettings,
        regions: Vec<ServedRegion>,
    ) -> Result<VerbsServer, VerbsError> {
        let nics: Vec<_> = open_devices_with(devices, fabric)?
            .into_iter()
            .filter(|n| n.info.active)
            .collect();
        if nics.is_empty() {
            return Err(VerbsError::Device {
                device: "-".into(),
                step: "find device",
                detail: "no RDMA device with an ACTIVE port and a usable GID".into(),
            });
        }
        VerbsServer::new(nics, regions)
    }

    /// Registers every region (remote read only) on each of `nics`, after
    /// checking that this process may pin them ([`PinBudget::current`]).
    pub fn new(nics: Vec<Arc<Nic>>, regions: Vec<ServedRegion>) -> Result<VerbsServer, VerbsError> {
        VerbsServer::with_budget(nics, regions, &PinBudget::current())
    }

    /// What registering `regions` on `nics` pins under `policy`: devices
    /// that register with on-demand paging for RC reads pin nothing. With
    /// [`OdpPolicy::Auto`], every device pins when that fits `budget`, and
    /// the devices offering ODP use it only when it does not.
    pub fn pin_plan(
        nics: &[Arc<Nic>],
        regions: &[ServedRegion],
        policy: OdpPolicy,
        budget: &PinBudget,
    ) -> PinPlan {
        let devices: Vec<(String, bool)> = nics
            .iter()
            .map(|n| (n.info.name.clone(), n.info.odp_rc_read))
            .collect();
        let bytes = regions
            .iter()
            .map(|r| (*r.data).as_ref().len() as u64)
            .sum();
        crate::pinning::choose(&devices, bytes, regions.len(), policy, budget)
    }

    /// [`VerbsServer::new`] against a given budget: refuses with
    /// [`VerbsError::Pinning`] (the numbers and the fix) before registering
    /// anything when the plan does not fit; registers with on-demand paging
    /// on devices that offer it for RC RDMA READ only as [`OdpPolicy::from_env`]
    /// says (by default never: ODP is opt-in).
    pub fn with_budget(
        nics: Vec<Arc<Nic>>,
        regions: Vec<ServedRegion>,
        budget: &PinBudget,
    ) -> Result<VerbsServer, VerbsError> {
        let policy = OdpPolicy::from_env().map_err(|detail| VerbsError::Device {
            device: "-".into(),
            step: "on-demand paging policy",
            detail,
        })?;
        let plan = VerbsServer::pin_plan(&nics, &regions, policy, budget);
        crate::pinning::check(&plan, budget)?;
        tracing::info!(
            bytes = plan.bytes,
            pinning = ?plan.pinning,
            on_demand = ?plan.on_demand,
            memlock = ?budget.memlock,
            cap_ipc_lock = budget.cap_ipc_lock,
            mem_available = ?budget.mem_available,
            "verbs server: memory to register fits"
        );
        if nics.is_empty() {
            return Err(VerbsError::Device {
                device: "-".into(),
                step: "verbs server",
                detail: "no RDMA device given".into(),
            });
        }
        let mut table = Vec::with_capacity(regions.len());
        let mut data = Vec::with_capacity(regions.len());
        for r in &regions {
            let bytes: &[u8] = (*r.data).as_ref();
            table.push((
                r.id,
                r.name.clone(),
                bytes.len() as u64,
                bytes.as_ptr() as usize,
            ));
            data.push(Arc::clone(&r.data));
        }
        let mut rails = Vec::with_capacity(nics.len());
        for nic in nics {
            let derr = |step: &'static str, detail: String| VerbsError::Device {
                device: nic.info.name.clone(),
                step,
                detail,
            };
            let cqe = (MAX_QPS_PER_CONNECT as u32 * 4).min(nic.info.max_cqe);
            let cq = Arc::new(
                Cq::new(&nic.ctx, cqe, None).map_err(|e| derr("ibv_create_cq", e.to_string()))?,
            );
            let mut mrs = Vec::with_capacity(table.len());
            for (idx, (id, name, len, _ptr)) in table.iter().enumerate() {
                if *len == 0 {
                    mrs.push(None);
                    continue;
                }
                let odp = plan.on_demand.contains(&nic.info.name);
                let reg = |d: &Arc<dyn AsRef<[u8]> + Send + Sync>| {
                    crate::raw::reg_remote_read(&nic.pd, d, odp).map_err(|e| {
                        let efault = e.to_string().contains("os error 14");
                        let err = derr(
                            "ibv_reg_mr (remote read)",
                            format!("region {} ({name}, {len} bytes): {e}", id.0),
                        );
                        (efault, err)
                    })
                };
                let mr = match reg(&data[idx]) {
                    Ok(mr) => mr,
                    // Linux < 6.2 pins every MR with FOLL_WRITE|FOLL_FORCE, which a read-only
                    // shared file mapping refuses (EFAULT): serve an in-memory copy instead.
                    Err((true, first)) => {
                        tracing::warn!(
                            device = %nic.info.name,
                            region = id.0,
                            %name,
                            "this kernel cannot pin a read-only file mapping for RDMA ({first}); \
                             registering an in-memory copy ({len} bytes) instead (Linux >= 6.2 needs no copy)"
                        );
                        let bytes: &[u8] = (*data[idx]).as_ref();
                        let copy: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes.to_vec());
                        data[idx] = copy;
                        reg(&data[idx]).map_err(|(_, e)| e)?
                    }
                    Err((false, e)) => return Err(e),
                };
                mrs.push(Some(mr));
            }
            tracing::info!(
                device = %nic.info.name,
                regions = table.len(),
                "verbs server: registered regions remote-read-only"
            );
            rails.push(ServerRail { nic, cq, mrs });
        }
        Ok(VerbsServer {
            rails,
            cm: None,
            regions: table,
            _data: data,
        })
    }

    /// Starts an rdma_cm listener on `addr` (e.g. `0.0.0.0:7472`; port 0
    /// picks one): clients that ask for rdma_cm QPs ([`crate::ConnectMode::Cm`])
    /// then get grants to connect to it. Returns the port.
    pub fn listen_cm(&mut self, addr: std::net::SocketAddr) -> Result<u16, VerbsError> {
        let l = CmListener::start(addr)?;
        let port = l.port();
        self.cm = Some(l);
        Ok(port)
    }

    /// The rdma_cm listener's port, when it listens.
    pub fn cm_port(&self) -> Option<u16> {
        self.cm.as_ref().map(CmListener::port)
    }

    /// The devices this server uses, in rail order.
    pub fn devices(&self) -> Vec<crate::DeviceInfo> {
        self.rails.iter().map(|r| r.nic.info.clone()).collect()
    }

    /// The region table as seen through the device of `rail` (addresses
    /// and rkeys of that device; see [`VerbsServer::rail_device`]).
    pub fn regions(&self, rail: u32) -> Vec<RegionInfo> {
        let r = self.rail_for(rail);
        self.regions
            .iter()
            .zip(&r.mrs)
            .map(|((id, name, len, _ptr), mr)| RegionInfo {
                id: *id,
                name: name.clone(),
                len: *len,
                addr: mr.as_ref().map(|m| m.get_ptr() as u64).unwrap_or(0),
                rkey: mr.as_ref().map(|m| m.rkey()).unwrap_or(0),
            })
            .collect()
    }

    /// The node device serving rail `rail`: device `rail` in this server's
    /// order (rail k of a client pairs with rail k of the node, as on a
    /// rail-optimized fabric; the client maps its rails when they differ),
    /// wrapping when the client has more rails than the node.
    pub fn rail_device(&self, rail: u32) -> &str {
        &self.rail_for(rail).nic.info.name
    }

    fn rail_for(&self, rail: u32) -> &ServerRail {
        &self.rails[rail as usize % self.rails.len()]
    }

    /// The rdma_cm branch of [`VerbsServer::accept`]: one RESET QP per
    /// request, offered to the listener; the answer carries the grants.
    fn accept_cm(
        &self,
        rail: u32,
        client: &[QpEndpoint],
        nerr: impl Fn(&str, String) -> VerbsError,
    ) -> Result<(Accepted, ServerQps), VerbsError> {
        let r = self.rail_for(rail);
        let info = &r.nic.info;
        let Some(l) = &self.cm else {
            return Err(nerr(
                "VerbsConnect",
                "the client asks for rdma_cm QPs, but this node does not listen for rdma_cm \
                 (start it with --verbs-cm-port)"
                    .into(),
            ));
        };
        let addr = cm::rail_addr(info);
        let mut qps = Vec::with_capacity(client.len());
        let mut eps = Vec::with_capacity(client.len());
        for c in client {
            let responder = read_depth(info.max_qp_rd_atom, c.rd_atom);
            let qp = Qp::new(&r.nic.pd, &r.cq, 1, 1)
                .map_err(|e| nerr("ibv_create_qp", e.to_string()))?;
            let slot = l.offer(qp, info, responder);
            eps.push(l.grant(&slot, addr).to_endpoint());
            qps.push(NodeQp::Cm(slot));
        }
        tracing::debug!(device = %info.name, rail, qps = qps.len(), ?addr, "verbs server: granted QPs for rdma_cm");
        Ok((
            Accepted {
                qps: eps,
                regions: self.regions(rail),
            },
            ServerQps { qps },
        ))
    }

    /// Accepts a client's QPs from its device `client_device` (for logs) on
    /// rail `rail` (see [`VerbsServer::rail_device`]): creates one QP per client QP,
    /// connects it (RTR/RTS, smaller MTU), and returns the node's endpoints
    /// and region table. Keep the returned [`ServerQps`] while the client's
    /// control connection lives.
    pub fn accept(
        &self,
        client_device: &str,
        rail: u32,
        client: &[QpEndpoint],
    ) -> Result<(Accepted, ServerQps), VerbsError> {
        let r = self.rail_for(rail);
        let info = &r.nic.info;
        let nerr = |step: &str, detail: String| VerbsError::Node {
            node: "client".into(),
            step: step.to_string(),
            detail: format!(
                "node device {} port {} (rail {rail}, client device {client_device}): {detail}",
                info.name, info.port
            ),
        };
        if client.is_empty() || client.len() > MAX_QPS_PER_CONNECT {
            return Err(nerr(
                "VerbsConnect",
                format!(
                    "asked for {} QPs (1..={MAX_QPS_PER_CONNECT} allowed)",
                    client.len()
                ),
            ));
        }
        let n_cm = client.iter().filter(|c| cm::is_cm(c)).count();
        if n_cm == client.len() {
            return self.accept_cm(rail, client, nerr);
        }
        if n_cm != 0 {
            return Err(nerr(
                "VerbsConnect",
                format!(
                    "{n_cm} of {} QPs ask for rdma_cm: all or none",
                    client.len()
                ),
            ));
        }
        let mut qps = Vec::with_capacity(client.len());
        let mut eps = Vec::with_capacity(client.len());
        for (i, c) in client.iter().enumerate() {
            if !(1..=5).contains(&c.mtu) || c.psn > 0xff_ffff {
                return Err(nerr(
                    "VerbsConnect",
                    format!("QP {i}: bad endpoint (mtu {}, psn {:#x})", c.mtu, c.psn),
                ));
            }
            // Responder resources: no more than the client will ever have
            // outstanding (its initiator depth) nor than this device allows.
            let responder = read_depth(info.max_qp_rd_atom, c.rd_atom);
            let mut qp = Qp::new(&r.nic.pd, &r.cq, 1, 1)
                .map_err(|e| nerr("ibv_create_qp", e.to_string()))?;
            let psn = rand::random::<u32>() & 0xff_ffff;
            qp.connect(&Connect {
                port: info.port,
                sgid_index: info.gid_index,
                remote_qpn: c.qp_num,
                remote_psn: c.psn,
                local_psn: psn,
                remote_gid: c.gid,
                remote_lid: c.lid,
                path_mtu: u32::from(c.mtu.min(info.mtu)),
                max_rd_atomic: 1,
                max_dest_rd_atomic: responder,
                access: ACCESS_REMOTE_READ,
                traffic_class: info.traffic_class,
                sl: info.service_level,
                pkey_index: info.pkey_index,
                timeout: info.qp_timeout,
                retry_cnt: info.qp_retry_count,
            })
            .map_err(|e| nerr("QP RESET->RTS", e.to_string()))?;
            eps.push(QpEndpoint {
                qp_num: qp.qp_num(),
                psn,
                gid: info.gid,
                lid: info.lid,
                mtu: info.mtu,
                rd_atom: responder,
            });
            qps.push(NodeQp::Direct(qp));
        }
        tracing::debug!(device = %info.name, rail, client_device, qps = qps.len(), "verbs server: accepted QPs");
        Ok((
            Accepted {
                qps: eps,
                regions: self.regions(rail),
            },
            ServerQps { qps },
        ))
    }
}
