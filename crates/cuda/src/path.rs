//! Which way bytes travel into device memory: the pure decision function.
//!
//! Order of preference for a device destination:
//! 1. [`DevicePath::DmaBuf`]: GPUDirect RDMA through a dmabuf export of device
//!    memory (`cuMemGetHandleForAddressRange` then `ibv_reg_dmabuf_mr`);
//! 2. [`DevicePath::PeerMem`]: GPUDirect RDMA through `ibv_reg_mr` on the
//!    device pointer, which works where the `nvidia_peermem` module is loaded;
//! 3. [`DevicePath::PinnedBounce`]: the transport writes into pinned host
//!    memory and an async copy on the rank's stream moves it to the device.
//!
//! Without CUDA the destination is [`DevicePath::Host`]. [`choose_path`] is a
//! pure function of what was probed, so it is unit-tested without a GPU; the
//! caller logs [`PathChoice::log`] once.

use std::fmt;

/// How a step buffer's bytes reach their final memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevicePath {
    /// RDMA straight into device memory registered through a dmabuf fd.
    DmaBuf,
    /// RDMA straight into device memory registered through nvidia-peermem.
    PeerMem,
    /// Transport into pinned host memory, then an async host-to-device copy.
    PinnedBounce,
    /// No GPU: plain host memory.
    Host,
}

impl DevicePath {
    /// Short name used in logs and options: `dmabuf`, `peermem`, `bounce`, `host`.
    pub fn name(self) -> &'static str {
        match self {
            DevicePath::DmaBuf => "dmabuf",
            DevicePath::PeerMem => "peermem",
            DevicePath::PinnedBounce => "bounce",
            DevicePath::Host => "host",
        }
    }

    /// Parses a [`DevicePath::name`] (as given to an option or env var).
    pub fn parse(s: &str) -> Option<DevicePath> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dmabuf" => Some(DevicePath::DmaBuf),
            "peermem" | "peer-mem" | "peer_mem" => Some(DevicePath::PeerMem),
            "bounce" | "pinned" | "pinned-bounce" => Some(DevicePath::PinnedBounce),
            "host" => Some(DevicePath::Host),
            _ => None,
        }
    }

    /// True when the transport writes straight into device memory.
    pub fn is_direct(self) -> bool {
        matches!(self, DevicePath::DmaBuf | DevicePath::PeerMem)
    }
}

impl fmt::Display for DevicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the GPU side offers, from [`crate::probe`] (or a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSide {
    /// No CUDA on this machine.
    Absent {
        /// Why (from the probe).
        reason: String,
    },
    /// A CUDA device with these GPUDirect capabilities.
    Present(GpuDirectCaps),
}

/// GPUDirect-related capabilities of one device and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuDirectCaps {
    /// Device index.
    pub device: usize,
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED` is set.
    pub dmabuf_supported: bool,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED` is set.
    pub gpudirect_rdma_supported: bool,
    /// The `nvidia_peermem` (or legacy `nv_peer_mem`) kernel module is loaded.
    pub peer_mem_loaded: bool,
}

/// What the transport can do with a destination buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportCaps {
    /// Backend name (`verbs`, `tcp`, `local`).
    pub backend: String,
    /// The NIC writes into registered memory (RDMA); false when the CPU
    /// copies (tcp, local), which needs host-addressable memory.
    pub registers_memory: bool,
    /// The RDMA provider accepts `ibv_reg_dmabuf_mr` (false on rxe).
    pub dmabuf_mr: bool,
}

impl TransportCaps {
    /// Capabilities of a CPU-copying transport (`tcp`, `local`).
    pub fn cpu_copy(backend: &str) -> TransportCaps {
        TransportCaps {
            backend: backend.to_string(),
            registers_memory: false,
            dmabuf_mr: false,
        }
    }

    /// Capabilities of an RDMA transport whose provider does (or does not)
    /// accept dmabuf memory registrations.
    pub fn rdma(backend: &str, dmabuf_mr: bool) -> TransportCaps {
        TransportCaps {
            backend: backend.to_string(),
            registers_memory: true,
            dmabuf_mr,
        }
    }
}

/// The outcome of [`choose_path`]: viable paths best first, and why the
/// others were passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChoice {
    /// Viable paths in order of preference; never empty. The caller uses the
    /// first and falls back to the next when a registration is refused.
    pub candidates: Vec<DevicePath>,
    /// Why the chosen (first) path was taken.
    pub reason: String,
    /// Paths passed over, each with the reason.
    pub rejected: Vec<(DevicePath, String)>,
}

impl PathChoice {
    /// The chosen path.
    pub fn path(&self) -> DevicePath {
        self.candidates.first().copied().unwrap_or(DevicePath::Host)
    }

    /// The path to fall back to after `failed` was refused, if any.
    pub fn fallback_after(&self, failed: DevicePath) -> Option<DevicePath> {
        let i = self.candidates.iter().position(|p| *p == failed)?;
        self.candidates.get(i + 1).copied()
    }

    /// The direct (GPUDirect) paths to try, best first: the chosen path and
    /// each [`fallback_after`](Self::fallback_after) it while direct. Empty
    /// when the chosen path is not direct. When all are refused, the
    /// transport writes the pinned bounce buffer.
    pub fn direct_chain(&self) -> Vec<DevicePath> {
        let mut chain = Vec::new();
        let mut p = Some(self.path());
        while let Some(path) = p.filter(|p| p.is_direct()) {
            chain.push(path);
            p = self.fallback_after(path);
        }
        chain
    }

    /// One human line: `dmabuf (because ...); passed over: peermem (...)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} ({})", self.path(), self.reason);
        if !self.rejected.is_empty() {
            s.push_str("; passed over: ");
            let parts: Vec<String> = self
                .rejected
                .iter()
                .map(|(p, why)| format!("{p} ({why})"))
                .collect();
            s.push_str(&parts.join(", "));
        }
        s
    }

    /// Logs the choice once at info level.
    pub fn log(&self) {
        tracing::info!(
            path = self.path().name(),
            "device destination: {}",
            self.summary()
        );
    }
}

/// Decides how bytes reach device memory, best first: dmabuf, then
/// peer-memory, then a pinned bounce buffer; host memory without CUDA.
///
/// `force` restricts the choice to one path (from an option); a forced path
/// that is not viable yields an error naming why.
pub fn choose_path(
    gpu: &GpuSide,
    transport: &TransportCaps,
    force: Option<DevicePath>,
) -> Result<PathChoice, String> {
    let caps = match gpu {
        GpuSide::Absent { reason } => {
            if let Some(f) = force.filter(|f| *f != DevicePath::Host) {
                return Err(format!(
                    "path {f} was requested but CUDA is absent: {reason}"
                ));
            }
            return Ok(PathChoice {
                candidates: vec![DevicePath::Host],
                reason: format!("no CUDA: {reason}"),
                rejected: Vec::new(),
            });
        }
        GpuSide::Present(c) => c,
    };
    let backend = &transport.backend;
    let mut viable: Vec<(DevicePath, String)> = Vec::new();
    let mut rejected: Vec<(DevicePath, String)> = Vec::new();

    // 1. dmabuf
    if !transport.registers_memory {
        rejected.push((
            DevicePath::DmaBuf,
            format!(
                "the {backend} transport copies with the CPU, which cannot write device memory"
            ),
        ));
    } else if !caps.dmabuf_supported {
        rejected.push((
            DevicePath::DmaBuf,
            format!("GPU {} does not support dmabuf export", caps.device),
        ));
    } else if !transport.dmabuf_mr {
        rejected.push((
            DevicePath::DmaBuf,
            format!("the {backend} provider has no dmabuf memory registration"),
        ));
    } else {
        viable.push((
            DevicePath::DmaBuf,
            format!(
                "GPU {} exports dmabuf and the {backend} provider registers it: NIC writes device memory directly",
                caps.device
            ),
        ));
    }

    // 2. peer memory
    if !transport.registers_memory {
        rejected.push((
            DevicePath::PeerMem,
            format!("the {backend} transport does not register memory"),
        ));
    } else if !caps.peer_mem_loaded {
        rejected.push((
            DevicePath::PeerMem,
            "the nvidia_peermem kernel module is not loaded".to_string(),
        ));
    } else if !caps.gpudirect_rdma_supported {
        rejected.push((
            DevicePath::PeerMem,
            format!("GPU {} does not support GPUDirect RDMA", caps.device),
        ));
    } else {
        viable.push((
            DevicePath::PeerMem,
            format!(
                "nvidia_peermem is loaded and GPU {} supports GPUDirect RDMA",
                caps.device
            ),
        ));
    }

    // 3. bounce: always viable with a GPU.
    let bounce_why = if viable.is_empty() {
        format!(
            "no direct path for the {backend} transport: transport writes pinned host memory, then an async copy to GPU {}",
            caps.device
        )
    } else {
        "fallback if the direct registration is refused".to_string()
    };
    viable.push((DevicePath::PinnedBounce, bounce_why));

    if let Some(f) = force {
        return match viable.iter().position(|(p, _)| *p == f) {
            Some(i) => {
                let (p, why) = viable.swap_remove(i);
                let mut others: Vec<(DevicePath, String)> = rejected;
                others.extend(
                    viable
                        .into_iter()
                        .map(|(p, _)| (p, "not requested".to_string())),
                );
                Ok(PathChoice {
                    candidates: vec![p],
                    reason: format!("requested; {why}"),
                    rejected: others,
                })
            }
            None => {
                let why = rejected
                    .iter()
                    .find(|(p, _)| *p == f)
                    .map(|(_, w)| w.clone())
                    .unwrap_or_else(|| "not a device path while a GPU is present".to_string());
                Err(format!("path {f} was requested but is not viable: {why}"))
            }
        };
    }

    let reason = viable[0].1.clone();
    Ok(PathChoice {
        candidates: viable.into_iter().map(|(p, _)| p).collect(),
        reason,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(dmabuf: bool, rdma: bool, peer: bool) -> GpuSide {
        GpuSide::Present(GpuDirectCaps {
            device: 2,
            dmabuf_supported: dmabuf,
            gpudirect_rdma_supported: rdma,
            peer_mem_loaded: peer,
        })
    }

    #[test]
    fn no_cuda_means_host() {
        let c = choose_path(
            &GpuSide::Absent {
                reason: "libcuda.so.1 not found".into(),
            },
            &TransportCaps::rdma("verbs", true),
            None,
        )
        .unwrap();
        assert_eq!(c.candidates, vec![DevicePath::Host]);
        assert!(c.reason.contains("libcuda.so.1 not found"), "{}", c.reason);
    }

    #[test]
    fn dmabuf_preferred_then_peermem_then_bounce() {
        let c = choose_path(
            &gpu(true, true, true),
            &TransportCaps::rdma("verbs", true),
            None,
        )
        .unwrap();
        assert_eq!(
            c.candidates,
            vec![
                DevicePath::DmaBuf,
                DevicePath::PeerMem,
                DevicePath::PinnedBounce
            ]
        );
        assert!(c.rejected.is_empty());
        assert_eq!(
            c.fallback_after(DevicePath::DmaBuf),
            Some(DevicePath::PeerMem)
        );
        assert_eq!(
            c.fallback_after(DevicePath::PeerMem),
            Some(DevicePath::PinnedBounce)
        );
        assert_eq!(c.fallback_after(DevicePath::PinnedBounce), None);
        assert_eq!(
            c.direct_chain(),
            vec![DevicePath::DmaBuf, DevicePath::PeerMem]
        );
    }

    #[test]
    fn rxe_without_dmabuf_mr_uses_peermem_when_loaded() {
        let c = choose_path(
            &gpu(true, true, true),
            &TransportCaps::rdma("verbs", false),
            None,
        )
        .unwrap();
        assert_eq!(c.path(), DevicePath::PeerMem);
        assert_eq!(c.direct_chain(), vec![DevicePath::PeerMem]);
        assert_eq!(c.rejected.len(), 1);
        assert!(c.rejected[0].1.contains("no dmabuf memory registration"));
    }

    #[test]
    fn rdma_without_any_gpudirect_bounces_and_says_why() {
        let c = choose_path(
            &gpu(false, false, false),
            &TransportCaps::rdma("verbs", true),
            None,
        )
        .unwrap();
        assert_eq!(c.candidates, vec![DevicePath::PinnedBounce]);
        assert!(c.direct_chain().is_empty());
        let s = c.summary();
        assert!(s.contains("does not support dmabuf export"), "{s}");
        assert!(
            s.contains("nvidia_peermem kernel module is not loaded"),
            "{s}"
        );
    }

    #[test]
    fn peermem_needs_gpudirect_attribute() {
        let c = choose_path(
            &gpu(false, false, true),
            &TransportCaps::rdma("verbs", false),
            None,
        )
        .unwrap();
        assert_eq!(c.path(), DevicePath::PinnedBounce);
        assert!(c.summary().contains("does not support GPUDirect RDMA"));
    }

    #[test]
    fn cpu_transports_always_bounce() {
        for backend in ["tcp", "local"] {
            let c = choose_path(
                &gpu(true, true, true),
                &TransportCaps::cpu_copy(backend),
                None,
            )
            .unwrap();
            assert_eq!(c.candidates, vec![DevicePath::PinnedBounce], "{backend}");
            assert_eq!(c.rejected.len(), 2);
            assert!(c.reason.contains(backend));
        }
    }

    #[test]
    fn forced_paths() {
        let verbs = TransportCaps::rdma("verbs", true);
        let c = choose_path(
            &gpu(true, true, true),
            &verbs,
            Some(DevicePath::PinnedBounce),
        )
        .unwrap();
        assert_eq!(c.candidates, vec![DevicePath::PinnedBounce]);
        let e =
            choose_path(&gpu(true, true, false), &verbs, Some(DevicePath::PeerMem)).unwrap_err();
        assert!(e.contains("nvidia_peermem"), "{e}");
        let e = choose_path(
            &GpuSide::Absent { reason: "x".into() },
            &verbs,
            Some(DevicePath::DmaBuf),
        )
        .unwrap_err();
        assert!(e.contains("CUDA is absent"), "{e}");
        let e = choose_path(&gpu(true, true, true), &verbs, Some(DevicePath::Host)).unwrap_err();
        assert!(e.contains("not a device path"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for p in [
            DevicePath::DmaBuf,
            DevicePath::PeerMem,
            DevicePath::PinnedBounce,
            DevicePath::Host,
        ] {
            assert_eq!(DevicePath::parse(p.name()), Some(p));
        }
        assert_eq!(DevicePath::parse("nope"), None);
    }
}
