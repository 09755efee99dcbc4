//! RDMA device discovery: which devices exist, which port is ACTIVE, which
//! GID to use (RoCE v2, IPv4-mapped preferred), the MTU and the read depth.
//!
//! Uses `sideway` for the device list, device context, protection domain and
//! memory registration.

use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, Weak};

use rdma_mummy_sys as sys;
use sideway::ibverbs::address::GidType;
use sideway::ibverbs::device::{DeviceInfo as _, DeviceList};
use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::protection_domain::ProtectionDomain;

use crate::error::VerbsError;
use crate::fabric::FabricSettings;

/// What discovery learned about one RDMA device (one "rail").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name, e.g. `rxe0`, `mlx5_0`.
    pub name: String,
    /// Port used (1-based).
    pub port: u8,
    /// Whether that port is ACTIVE.
    pub active: bool,
    /// Link layer: `Ethernet` (RoCE) or `InfiniBand`.
    pub link_layer: &'static str,
    /// Index of the chosen GID in the port's GID table.
    pub gid_index: u8,
    /// The chosen GID.
    pub gid: [u8; 16],
    /// Its type (`RoCEv2`, `RoCEv1`, `IB`).
    pub gid_type: &'static str,
    /// Every valid GID of the port: (index, type, address).
    pub gids: Vec<(u32, &'static str, Ipv6Addr)>,
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// Active MTU as an `ibv_mtu` value (1 = 256 ... 5 = 4096).
    pub mtu: u8,
    /// Outstanding RDMA READs a QP may have as responder (`max_qp_rd_atom`).
    pub max_qp_rd_atom: u32,
    /// Outstanding RDMA READs a QP may issue (`max_qp_init_rd_atom`).
    pub max_qp_init_rd_atom: u32,
    /// Maximum work requests per QP (`max_qp_wr`).
    pub max_qp_wr: u32,
    /// Maximum CQ entries (`max_cqe`).
    pub max_cqe: u32,
    /// On-demand paging for RC RDMA READ (`IBV_ODP_SUPPORT` and
    /// `rc_odp_caps & IBV_ODP_SUPPORT_READ`): regions register without pinning.
    pub odp_rc_read: bool,
    /// GRH traffic class every QP on this device uses ([`FabricSettings`]).
    pub traffic_class: u8,
    /// Service level every QP on this device uses.
    pub service_level: u8,
    /// Partition key index every QP on this device uses.
    pub pkey_index: u16,
    /// Local ACK timeout exponent every QP on this device uses
    /// ([`FabricSettings::timeout`]).
    pub qp_timeout: u8,
    /// Transport retry count every QP on this device uses
    /// ([`FabricSettings::retry_count`]).
    pub qp_retry_count: u8,
}

impl DeviceInfo {
    /// MTU in bytes.
    pub fn mtu_bytes(&self) -> u32 {
        mtu_bytes(self.mtu)
    }
}

/// Converts an `ibv_mtu` value to bytes (256 << (v - 1)); unknown values give 0.
pub fn mtu_bytes(v: u8) -> u32 {
    match v {
        1..=5 => 256u32 << (v - 1),
        _ => 0,
    }
}

/// An opened device with a protection domain: everything a rail needs.
pub struct Nic {
    /// What discovery found.
    pub info: DeviceInfo,
    pub(crate) ctx: Arc<DeviceContext>,
    pub(crate) pd: Arc<ProtectionDomain>,
}

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nic").field("info", &self.info).finish()
    }
}

fn gid_type_name(t: GidType) -> &'static str {
    match t {
        GidType::RoceV2 => "RoCEv2",
        GidType::RoceV1 => "RoCEv1",
        GidType::InfiniBand => "IB",
    }
}

/// Whether ODP caps offer on-demand paging for RC RDMA READ (responder side).
fn odp_rc_read(c: &sys::ibv_odp_caps) -> bool {
    let general = c.general_caps & u64::from(sys::ibv_odp_general_caps::IBV_ODP_SUPPORT.0) != 0;
    let read = c.per_transport_caps.rc_odp_caps
        & sys::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_READ.0
        != 0;
    general && read
}

fn is_ipv4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|&b| b == 0) && g[10] == 0xff && g[11] == 0xff
}

/// Device contexts and protection domains opened by this process, by device
/// name; weak, so a device closes when nothing holds it any more.
type Opened = Vec<(String, Weak<DeviceContext>, Weak<ProtectionDomain>)>;

static OPENED: Mutex<Opened> = Mutex::new(Vec::new());

/// The live context and PD of device `name`, if this process holds them.
fn shared(name: &str) -> Option<(Arc<DeviceContext>, Arc<ProtectionDomain>)> {
    let opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    opened
        .iter()
        .filter(|(n, ..)| n == name)
        .find_map(|(_, c, p)| Some((c.upgrade()?, p.upgrade()?)))
}

fn remember(nic: &Nic) {
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    opened.retain(|(_, c, p)| c.strong_count() > 0 && p.strong_count() > 0);
    opened.push((
        nic.info.name.clone(),
        Arc::downgrade(&nic.ctx),
        Arc::downgrade(&nic.pd),
    ));
}

/// Lists RDMA devices. Errors when libibverbs cannot be loaded or the device
/// list cannot be read; an empty list is not an error.
pub fn list_devices() -> Result<Vec<DeviceInfo>, VerbsError> {
    Ok(open_devices(None)?
        .into_iter()
        .map(|n| n.info.clone())
        .collect())
}

/// Opens devices (all in libibverbs' order, or those named in `only`, in
/// that order: they become rails 0, 1, ...), each with its first ACTIVE
/// port (or port 1 when none is active, reported with `active: false`).
/// A device this process already holds open (through any transport or
/// server) is shared: one context and one protection domain per device and
/// process, as `ibv_open_device` per connection would multiply them.
pub fn open_devices(only: Option<&[String]>) -> Result<Vec<Arc<Nic>>, VerbsError> {
    open_devices_with(only, &FabricSettings::DEFAULT)
}

/// [`open_devices`] with fabric settings: the port and GID index given
/// replace discovery's choice (an error names the device, port and index
/// when they do not exist), and the traffic class, service level and pkey
/// index are recorded in each [`DeviceInfo`] for its QPs.
pub fn open_devices_with(
    only: Option<&[String]>,
    fabric: &FabricSettings,
) -> Result<Vec<Arc<Nic>>, VerbsError> {
    // Before this process's first verbs object (`ibv_fork_init` must come
    // before any registration, and before providers allocate queues).
    crate::fork::ensure();
    fabric.check().map_err(|detail| VerbsError::Device {
        device: "-".into(),
        step: "fabric settings",
        detail,
    })?;
    if let Err(e) = crate::raw::libibverbs_loadable() {
        return Err(VerbsError::NoLibrary { detail: e });
    }
    let list = DeviceList::new().map_err(|e| {
        let src = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let hint = if std::path::Path::new("/sys/class/infiniband").exists() {
            ""
        } else {
            " (this kernel has no RDMA subsystem: /sys/class/infiniband is missing)"
        };
        VerbsError::Device {
            device: "-".into(),
            step: "ibv_get_device_list",
            detail: format!("{e}: {src}{hint}"),
        }
    })?;
    let mut out = Vec::new();
    for dev in list.iter() {
        let name = dev.name();
        if let Some(only) = only {
            if !only.iter().any(|o| o == &name) {
                continue;
            }
        }
        let derr = |step: &'static str, detail: String| VerbsError::Device {
            device: name.clone(),
            step,
            detail,
        };
        // One context and protection domain per device and process, shared by
        // every transport and server holding them; the port, GID and limits
        // are queried afresh on every open.
        let nic = match shared(&name) {
            Some((ctx, pd)) => open_nic(&name, ctx, Some(pd), fabric)?,
            None => {
                let ctx = dev
                    .open()
                    .map_err(|e| derr("ibv_open_device", format!("{e:?}")))?;
                let nic = open_nic(&name, ctx, None, fabric)?;
                remember(&nic);
                nic
            }
        };
        out.push(Arc::new(nic));
    }
    if let Some(only) = only {
        // Rails in the order given (rail k is the k-th device named), not
        // the order libibverbs lists them in.
        out.sort_by_key(|n| only.iter().position(|o| *o == n.info.name));
        for o in only {
            if !out.iter().any(|n| &n.info.name == o) {
                return Err(VerbsError::Device {
                    device: o.clone(),
                    step: "find device",
                    detail: "no RDMA device with this name".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Queries `ctx` and wraps it with `pd` (a fresh protection domain when `None`).
fn open_nic(
    name: &str,
    ctx: Arc<DeviceContext>,
    pd: Option<Arc<ProtectionDomain>>,
    fabric: &FabricSettings,
) -> Result<Nic, VerbsError> {
    let derr = |step: &'static str, detail: String| VerbsError::Device {
        device: name.to_string(),
        step,
        detail,
    };
    let dattr = ctx
        .query_device()
        .map_err(|e| derr("ibv_query_device", format!("{e:?}")))?;
    let a = &dattr.attr.orig_attr;
    let nports = a.phys_port_cnt.max(1);
    let mut chosen = None;
    if let Some(p) = fabric.port {
        if p > nports {
            return Err(derr(
                "ibv_query_port",
                format!("port {p} does not exist (the device has {nports})"),
            ));
        }
    }
    for port in (1..=nports).filter(|p| fabric.port.is_none_or(|want| want == *p)) {
        let pa = ctx
            .query_port(port)
            .map_err(|e| derr("ibv_query_port", format!("{e:?}")))?;
        let active = pa.attr.state == sys::ibv_port_state::IBV_PORT_ACTIVE;
        if active {
            chosen = Some((port, pa, true));
            break;
        }
        if chosen.is_none() {
            chosen = Some((port, pa, false));
        }
    }
    let Some((port, pa, active)) = chosen else {
        return Err(derr("ibv_query_port", "device has no ports".into()));
    };
    let link_layer = if pa.attr.link_layer == 1 {
        "InfiniBand"
    } else {
        "Ethernet"
    };
    let mut gids = Vec::new();
    let mut best: Option<(u32, u32, [u8; 16], &'static str)> = None; // (score, index, gid, type)
    for idx in 0..pa.attr.gid_tbl_len.max(0) as u32 {
        let Ok(entry) = ctx.query_gid_ex(port, idx) else {
            continue;
        };
        let gid = entry.gid();
        let raw: [u8; 16] = Ipv6Addr::from(gid).octets();
        if raw.iter().all(|&b| b == 0) {
            continue;
        }
        let t = entry.gid_type();
        let tname = gid_type_name(t);
        gids.push((idx, tname, Ipv6Addr::from(raw)));
        let score = match (t, is_ipv4_mapped(&raw)) {
            (GidType::RoceV2, true) => 4,
            (GidType::RoceV2, false) => 3,
            (GidType::InfiniBand, _) => 2,
            (GidType::RoceV1, _) => 1,
        };
        if best.is_none_or(|(s, ..)| score > s) {
            best = Some((score, idx, raw, tname));
        }
    }
    let (gid_index, gid, gid_type) = match (fabric.gid_index, best) {
        (Some(want), _) => match gids.iter().find(|(i, ..)| *i == u32::from(want)) {
            Some((_, t, g)) => (want, g.octets(), *t),
            None => {
                return Err(derr(
                    "GID index",
                    format!(
                        "port {port}: GID index {want} does not exist or is empty \
                         (valid: {})",
                        gids.iter()
                            .map(|(i, t, g)| format!("{i} {t} {g}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        },
        (None, Some((_, i, g, t))) => (u8::try_from(i).unwrap_or(0), g, t),
        (None, None) => (0, [0u8; 16], "none"),
    };
    let pd = match pd {
        Some(pd) => pd,
        None => ctx
            .alloc_pd()
            .map_err(|e| derr("ibv_alloc_pd", format!("{e:?}")))?,
    };
    let info = DeviceInfo {
        name: name.to_string(),
        port,
        active: active && best.is_some(),
        link_layer,
        gid_index,
        gid,
        gid_type,
        gids,
        lid: pa.attr.lid,
        mtu: u8::try_from(pa.attr.active_mtu).unwrap_or(1),
        max_qp_rd_atom: a.max_qp_rd_atom.max(1) as u32,
        max_qp_init_rd_atom: a.max_qp_init_rd_atom.max(1) as u32,
        max_qp_wr: a.max_qp_wr.max(1) as u32,
        max_cqe: a.max_cqe.max(1) as u32,
        odp_rc_read: odp_rc_read(&dattr.attr.odp_caps),
        traffic_class: fabric.traffic_class,
        service_level: fabric.service_level,
        pkey_index: fabric.pkey_index,
        qp_timeout: fabric.timeout,
        qp_retry_count: fabric.retry_count,
    };
    Ok(Nic { info, ctx, pd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_values() {
        assert_eq!(mtu_bytes(1), 256);
        assert_eq!(mtu_bytes(3), 1024);
        assert_eq!(mtu_bytes(5), 4096);
        assert_eq!(mtu_bytes(0), 0);
        assert_eq!(mtu_bytes(6), 0);
    }

    #[test]
    fn ipv4_mapped_detection() {
        let g = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets();
        assert!(is_ipv4_mapped(&g));
        let l = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        assert!(!is_ipv4_mapped(&l));
    }
}
