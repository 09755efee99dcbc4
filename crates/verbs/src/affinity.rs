//! NIC–GPU affinity: which RDMA device a rank should read through, chosen
//! from sysfs as Mooncake's topology discovery and UCX's device distance do.
//!
//! Inputs: the GPU's PCI bus id (from CUDA: `cuDeviceGetPCIBusId`, exposed
//! by `seqfeed-cuda` as `DeviceInfo::pci_bus_id`; none without CUDA), the
//! rank's local rank, and a sysfs root (`/sys`; a synthetic tree in tests).
//!
//! Each RDMA device `<sysfs>/class/infiniband/<dev>/device` resolves to its
//! PCI function under `<sysfs>/devices/pci<domain>:<bus>/...`, the GPU's
//! `<sysfs>/bus/pci/devices/<bdf>` likewise. Devices are ranked by
//! 1. closeness: under the GPU's PCI root (host bridge), else on its NUMA
//!    node, else elsewhere, else without a PCI location (e.g. rxe);
//! 2. PCIe hops between the two: the path lengths below their deepest
//!    common ancestor (a shared switch gives fewer hops than a shared root);
//! 3. name, for a stable order.
//!
//! Devices tied for best are shared round-robin by local rank (the rank's
//! position among the GPUs that see the same tie), so two GPUs behind one
//! switch with two NICs use one each. An override wins: `SEQFEED_NICS_LOCAL_RANK_<n>`
//! (devices for local rank n, comma-separated), else `SEQFEED_NICS` (one
//! entry per local rank, wrapping; `+` joins several devices in an entry).
//! The choice is logged with its reason.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::VerbsError;

/// How close an RDMA device is to the GPU, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closeness {
    /// Under the same PCI root (host bridge) as the GPU.
    SamePciRoot,
    /// Another PCI root on the GPU's NUMA node.
    SameNuma,
    /// Another NUMA node (or the GPU's node is unknown).
    OtherNuma,
    /// No PCI location (a software device such as rxe).
    Unknown,
}

/// Where a PCI function sits: its path from the root and its NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLocation {
    /// Path components below `<sysfs>/devices`: `pci0000:00`, then one
    /// bus/device/function per bridge down to the function itself.
    pub path: Vec<String>,
    /// `numa_node` (None when sysfs says -1 or has no such file).
    pub numa_node: Option<u32>,
}

impl PciLocation {
    /// PCIe hops between two functions: both path lengths below their
    /// deepest common ancestor; `None` under different roots.
    pub fn hops(&self, other: &PciLocation) -> Option<usize> {
        let common = self
            .path
            .iter()
            .zip(&other.path)
            .take_while(|(a, b)| a == b)
            .count();
        (common > 0).then(|| self.path.len() + other.path.len() - 2 * common)
    }
}

/// One RDMA device as ranked for a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedNic {
    /// Device name (`mlx5_0`).
    pub name: String,
    /// Closeness class.
    pub closeness: Closeness,
    /// PCIe hops to the GPU (under the same root only).
    pub hops: Option<usize>,
    /// The device's NUMA node.
    pub numa_node: Option<u32>,
    /// The device's PCI function (bus id), when it has one.
    pub bus_id: Option<String>,
}

/// The devices a rank uses and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicChoice {
    /// Devices to use (rails), in order.
    pub devices: Vec<String>,
    /// Why: override, distance, or fallback, in words.
    pub reason: String,
    /// Every device, best first (empty when an override decided).
    pub ranking: Vec<RankedNic>,
}

/// Normalizes a PCI bus id as CUDA or NVML print it (`0000:3B:00.0`,
/// `00000000:3b:00.0`) to sysfs's form (`0000:3b:00.0`).
pub fn normalize_bus_id(id: &str) -> Option<String> {
    let id = id.trim().to_ascii_lowercase();
    let (dom, rest) = match id.matches(':').count() {
        2 => id.split_once(':')?,
        1 => ("0", id.as_str()),
        _ => return None,
    };
    let dom = u32::from_str_radix(dom, 16).ok()?;
    let (bus, devfn) = rest.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok()?;
    let func = u8::from_str_radix(func, 16).ok()?;
    (dev < 32 && func < 8).then(|| format!("{dom:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// The location of the PCI function a sysfs link points to.
fn locate(sysfs: &Path, link: &Path) -> Option<PciLocation> {
    let real = fs::canonicalize(link).ok()?;
    let devices = fs::canonicalize(sysfs.join("devices")).ok()?;
    let rel = real.strip_prefix(&devices).ok()?;
    let path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if !path.first().is_some_and(|p| p.starts_with("pci")) {
        return None; // not a PCI device (virtual, platform)
    }
    let numa_node = fs::read_to_string(real.join("numa_node"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|n| u32::try_from(n).ok());
    Some(PciLocation { path, numa_node })
}

/// The GPU's location from its bus id: `<sysfs>/bus/pci/devices/<bdf>`.
pub fn gpu_location(sysfs: &Path, bus_id: &str) -> Result<PciLocation, VerbsError> {
    let err = |detail: String| VerbsError::Device {
        device: format!("GPU {bus_id}"),
        step: "NIC affinity",
        detail,
    };
    let bdf = normalize_bus_id(bus_id).ok_or_else(|| err("not a PCI bus id".into()))?;
    let link = sysfs.join("bus/pci/devices").join(&bdf);
    locate(sysfs, &link).ok_or_else(|| err(format!("{} is not a PCI device", link.display())))
}

/// The RDMA devices under `<sysfs>/class/infiniband`, with their PCI
/// locations (None for software devices).
pub fn rdma_devices(sysfs: &Path) -> Result<Vec<(String, Option<PciLocation>)>, VerbsError> {
    let dir = sysfs.join("class/infiniband");
    let entries = fs::read_dir(&dir).map_err(|e| VerbsError::Device {
        device: "-".into(),
        step: "NIC affinity",
        detail: format!("listing {}: {e}", dir.display()),
    })?;
    let mut out: Vec<(String, Option<PciLocation>)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let loc = locate(sysfs, &e.path().join("device"));
            (name, loc)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Ranks `nics` for a GPU at `gpu` (None: no GPU known), best first.
pub fn rank(gpu: Option<&PciLocation>, nics: &[(String, Option<PciLocation>)]) -> Vec<RankedNic> {
    let mut out: Vec<RankedNic> = nics
        .iter()
        .map(|(name, loc)| {
            let hops = match (gpu, loc) {
                (Some(g), Some(l)) => g.hops(l),
                _ => None,
            };
            let closeness = match (gpu, loc) {
                (_, None) => Closeness::Unknown,
                (Some(_), Some(_)) if hops.is_some() => Closeness::SamePciRoot,
                (Some(g), Some(l)) if g.numa_node.is_some() && g.numa_node == l.numa_node => {
                    Closeness::SameNuma
                }
                _ => Closeness::OtherNuma,
            };
            RankedNic {
                name: name.clone(),
                closeness,
                hops,
                numa_node: loc.as_ref().and_then(|l| l.numa_node),
                bus_id: loc.as_ref().and_then(|l| l.path.last().cloned()),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.closeness, a.hops.unwrap_or(usize::MAX), &a.name).cmp(&(
            b.closeness,
            b.hops.unwrap_or(usize::MAX),
            &b.name,
        ))
    });
    out
}

/// The override for `local_rank` from the environment (through `env`, so
/// tests need not touch the process environment), with the variable's name.
fn env_override(
    local_rank: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, Vec<String>)> {
    let split = |v: &str, sep: char| -> Vec<String> {
        v.split(sep)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let var = format!("SEQFEED_NICS_LOCAL_RANK_{local_rank}");
    if let Some(v) = env(&var).filter(|v| !v.trim().is_empty()) {
        return Some((var, split(&v, ',')));
    }
    let v = env("SEQFEED_NICS").filter(|v| !v.trim().is_empty())?;
    let entries = split(&v, ',');
    let entry = entries.get(local_rank % entries.len().max(1))?;
    Some(("SEQFEED_NICS".into(), split(entry, '+')))
}

/// Chooses the RDMA devices for local rank `local_rank` whose GPU has PCI
/// bus id `gpu_bus_id` (None without CUDA), reading sysfs under `sysfs`
/// and overrides through `env`, and logs the choice with its reason.
pub fn choose_nics(
    sysfs: &Path,
    gpu_bus_id: Option<&str>,
    local_rank: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NicChoice, VerbsError> {
    let nics = rdma_devices(sysfs)?;
    let choice = decide(sysfs, &nics, gpu_bus_id, local_rank, env)?;
    tracing::info!(
        local_rank,
        gpu = gpu_bus_id.unwrap_or("-"),
        devices = %choice.devices.join(","),
        "verbs: NIC affinity: {}",
        choice.reason
    );
    Ok(choice)
}

fn decide(
    sysfs: &Path,
    nics: &[(String, Option<PciLocation>)],
    gpu_bus_id: Option<&str>,
    local_rank: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NicChoice, VerbsError> {
    if let Some((var, devices)) = env_override(local_rank, env) {
        if let Some(bad) = devices.iter().find(|d| !nics.iter().any(|(n, _)| n == *d)) {
            return Err(VerbsError::Device {
                device: bad.clone(),
                step: "NIC affinity",
                detail: format!(
                    "{var} names {bad}, which is not an RDMA device here (have: {})",
                    nics.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Ok(NicChoice {
            reason: format!(
                "{var} sets local rank {local_rank} to {}",
                devices.join(",")
            ),
            devices,
            ranking: Vec::new(),
        });
    }
    if nics.is_empty() {
        return Err(VerbsError::Device {
            device: "-".into(),
            step: "NIC affinity",
            detail: format!(
                "no RDMA device under {}",
                sysfs.join("class/infiniband").display()
            ),
        });
    }
    let gpu = gpu_bus_id.map(|b| gpu_location(sysfs, b)).transpose()?;
    let ranking = rank(gpu.as_ref(), nics);
    let best = &ranking[0];
    let tied: Vec<&RankedNic> = ranking
        .iter()
        .filter(|r| r.closeness == best.closeness && r.hops == best.hops)
        .collect();
    let pick = tied[local_rank % tied.len()];
    let why = match (gpu_bus_id, pick.closeness) {
        (None, _) => {
            "no GPU bus id (no CUDA): round-robin over every device by local rank".to_string()
        }
        (Some(g), Closeness::SamePciRoot) => format!(
            "{} hops from GPU {g} under its PCI root",
            pick.hops.unwrap_or(0)
        ),
        (Some(g), Closeness::SameNuma) => {
            format!(
                "no device under GPU {g}'s PCI root; same NUMA node {}",
                fmt_numa(pick.numa_node)
            )
        }
        (Some(g), Closeness::OtherNuma) => format!(
            "no device on GPU {g}'s NUMA node {}; device on node {}",
            fmt_numa(gpu.as_ref().and_then(|l| l.numa_node)),
            fmt_numa(pick.numa_node)
        ),
        (Some(_), Closeness::Unknown) => "no device has a PCI location (software RDMA?)".into(),
    };
    let tie = if tied.len() > 1 {
        format!(
            "; {} devices tied ({}), local rank {local_rank} takes #{}",
            tied.len(),
            tied.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            local_rank % tied.len()
        )
    } else {
        String::new()
    };
    Ok(NicChoice {
        devices: vec![pick.name.clone()],
        reason: format!("{}: {why}{tie}", pick.name),
        ranking,
    })
}

fn fmt_numa(n: Option<u32>) -> String {
    n.map_or_else(|| "?".into(), |n| n.to_string())
}

/// The local rank from the launcher's environment: `LOCAL_RANK` (torchrun),
/// `SLURM_LOCALID`, `OMPI_COMM_WORLD_LOCAL_RANK`, `MV2_COMM_WORLD_LOCAL_RANK`.
pub fn local_rank_from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<usize> {
    [
        "LOCAL_RANK",
        "SLURM_LOCALID",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| env(v).and_then(|s| s.trim().parse().ok()))
}

/// The default sysfs root.
pub fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}

/// [`choose_nics`] for this process: `/sys`, the process environment, and
/// the local rank from the launcher (0 when none says). Put the result's
/// `devices` in [`ClientOptions::devices`](crate::ClientOptions::devices).
pub fn nics_for_this_rank(gpu_bus_id: Option<&str>) -> Result<NicChoice, VerbsError> {
    let env = |k: &str| std::env::var(k).ok();
    let rank = local_rank_from_env(&env).unwrap_or(0);
    choose_nics(&default_sysfs(), gpu_bus_id, rank, &env)
}

/// The devices (rails) of a rank's verbs transports, for
/// [`ClientOptions::devices`](crate::ClientOptions::devices); `Ok(None)`:
/// every device with an ACTIVE port, as a rank without a GPU has always used.
///
/// In order of precedence:
/// 1. `explicit` devices (e.g. `seqfeed read --verbs-device`), used as given;
/// 2. an environment override for `local_rank` (`SEQFEED_NICS_LOCAL_RANK_<n>`,
///    `SEQFEED_NICS`, see [`choose_nics`]), for any rank; a device it names
///    that does not exist is an error;
/// 3. with a GPU destination (`gpu_bus_id`), the devices closest to that GPU
///    ([`choose_nics`]). When sysfs cannot place the GPU or lists no RDMA
///    device, the rank falls back to every device, with a warning;
/// 4. else `None`.
///
/// The choice is logged with its reason (except the plain `None`).
pub fn devices_for_rank(
    sysfs: &Path,
    gpu_bus_id: Option<&str>,
    local_rank: usize,
    explicit: Option<&[String]>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<NicChoice>, VerbsError> {
    if let Some(devices) = explicit.filter(|d| !d.is_empty()) {
        let choice = NicChoice {
            devices: devices.to_vec(),
            reason: "devices given explicitly".into(),
            ranking: Vec::new(),
        };
        tracing::info!(
            local_rank,
            devices = %choice.devices.join(","),
            "verbs: NIC affinity: {}",
            choice.reason
        );
        return Ok(Some(choice));
    }
    let overridden = env_override(local_rank, env).is_some();
    if gpu_bus_id.is_none() && !overridden {
        tracing::debug!(
            local_rank,
            "verbs: NIC affinity: no GPU destination, every ACTIVE device"
        );
        return Ok(None);
    }
    match choose_nics(sysfs, gpu_bus_id, local_rank, env) {
        Ok(choice) => Ok(Some(choice)),
        Err(e) if overridden => Err(e),
        Err(e) => {
            tracing::warn!(
                local_rank,
                gpu = gpu_bus_id.unwrap_or("-"),
                "verbs: NIC affinity: {e}; using every ACTIVE device"
            );
            Ok(None)
        }
    }
}

/// [`devices_for_rank`] for this process: `/sys`, the process environment,
/// and the local rank from the launcher ([`local_rank_from_env`], 0 when
/// none says).
pub fn devices_for_this_rank(
    gpu_bus_id: Option<&str>,
    explicit: Option<&[String]>,
) -> Result<Option<NicChoice>, VerbsError> {
    let env = |k: &str| std::env::var(k).ok();
    let rank = local_rank_from_env(&env).unwrap_or(0);
    devices_for_rank(&default_sysfs(), gpu_bus_id, rank, explicit, &env)
}

#[cfg(test)]
#[path = "affinity/tests.rs"]
mod tests;
