//! What a node will pin, checked against what the host allows, before any
//! registration: a node refuses to start with the numbers and the fix
//! instead of failing registration halfway or being OOM-killed.
//!
//! Accounting, as the kernel does it (`ib_umem_get`):
//! * every registration adds its pages to the process's pinned memory,
//!   checked against `RLIMIT_MEMLOCK` unless the process has
//!   `CAP_IPC_LOCK`: the same file registered on two devices counts twice;
//! * the pages themselves must be resident and cannot be reclaimed while
//!   registered, so the served bytes (once, whatever the device count) must
//!   fit in `MemAvailable`.
//!
//! A device that offers on-demand paging for RC RDMA READ
//! (`IBV_ACCESS_ON_DEMAND`, `odp_caps.per_transport_caps.rc_odp_caps &
//! IBV_ODP_SUPPORT_READ`) registers without pinning: it is left out of both
//! sums, and a node whose devices all offer it skips the check.
//!
//! Limits are read from `/proc/self/limits`, `/proc/self/status` (`CapEff`)
//! and `/proc/meminfo`, so the parsing is tested on fixed text.

use crate::error::VerbsError;

/// `CAP_IPC_LOCK`'s bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// What the host allows this process to pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinBudget {
    /// Soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited or unknown).
    pub memlock: Option<u64>,
    /// Whether the process has `CAP_IPC_LOCK` (the kernel then ignores the limit).
    pub cap_ipc_lock: bool,
    /// `MemAvailable` in bytes (`None`: unknown).
    pub mem_available: Option<u64>,
}

/// What a node will register: the served bytes and, per device, whether it
/// pins them (no on-demand paging) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPlan {
    /// Sum of the served regions' lengths.
    pub bytes: u64,
    /// Regions (files) served.
    pub regions: usize,
    /// Devices that pin every region.
    pub pinning: Vec<String>,
    /// Devices that register with on-demand paging (nothing pinned).
    pub on_demand: Vec<String>,
}

impl PinPlan {
    /// Bytes counted against `RLIMIT_MEMLOCK`: once per pinning device.
    pub fn memlock_needed(&self) -> u64 {
        self.bytes.saturating_mul(self.pinning.len() as u64)
    }

    /// Bytes that must stay resident: the served bytes when any device pins.
    pub fn resident_needed(&self) -> u64 {
        if self.pinning.is_empty() {
            0
        } else {
            self.bytes
        }
    }
}

/// When a node registers its regions with on-demand paging
/// (`IBV_ACCESS_ON_DEMAND`) on devices that offer it for RC RDMA READ, from
/// `SEQFEED_VERBS_ODP`. ODP is opt-in: the default is [`OdpPolicy::Never`],
/// because seqfeed's ODP path has only ever run on rxe, where it hung when
/// it carried the boot's first RDMA traffic and returned wrong bytes for
/// anonymous-memory regions (Linux 7.3); pinned regions also never make the
/// NIC wait on a page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OdpPolicy {
    /// Pin when pinning fits the memlock limit and `MemAvailable`; use ODP
    /// only to serve more than that (`auto`, explicitly).
    Auto,
    /// ODP wherever a device offers it (`1`, `on`, `true`, `yes`, `always`).
    Always,
    /// Always pin (unset, empty, `0`, `off`, `false`, `no`, `never`): the
    /// default. A node whose files do not fit its memlock limit or
    /// `MemAvailable` refuses with the numbers and the fix.
    #[default]
    Never,
}

/// The environment variable read by [`OdpPolicy::from_env`].
pub const ODP_ENV: &str = "SEQFEED_VERBS_ODP";

impl OdpPolicy {
    /// Parses a [`ODP_ENV`] value.
    pub fn parse(s: &str) -> Result<OdpPolicy, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(OdpPolicy::Auto),
            "1" | "on" | "true" | "yes" | "always" => Ok(OdpPolicy::Always),
            "" | "0" | "off" | "false" | "no" | "never" => Ok(OdpPolicy::Never),
            _ => Err(format!(
                "{ODP_ENV}={s:?}: expected never (default; 0, off), auto or always (1, on)"
            )),
        }
    }

    /// From [`ODP_ENV`] (unset: [`OdpPolicy::Never`]).
    pub fn from_env() -> Result<OdpPolicy, String> {
        OdpPolicy::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`OdpPolicy::from_env`] over any lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<OdpPolicy, String> {
        match get(ODP_ENV) {
            Some(v) => OdpPolicy::parse(&v),
            None => Ok(OdpPolicy::default()),
        }
    }
}

/// The plan for serving `bytes` in `regions` regions on `devices` (name,
/// offers ODP for RC READ) under `policy`: with [`OdpPolicy::Auto`], every
/// device pins when that passes [`check`] against `budget`, and the devices
/// offering ODP use it only when it does not.
pub fn choose(
    devices: &[(String, bool)],
    bytes: u64,
    regions: usize,
    policy: OdpPolicy,
    budget: &PinBudget,
) -> PinPlan {
    let with_odp = |use_odp: bool| {
        let names = |odp: bool| -> Vec<String> {
            devices
                .iter()
                .filter(|d| (d.1 && use_odp) == odp)
                .map(|d| d.0.clone())
                .collect()
        };
        PinPlan {
            bytes,
            regions,
            pinning: names(false),
            on_demand: names(true),
        }
    };
    match policy {
        OdpPolicy::Never => with_odp(false),
        OdpPolicy::Always => with_odp(true),
        OdpPolicy::Auto => {
            let pinned = with_odp(false);
            match check(&pinned, budget) {
                Ok(()) => pinned,
                Err(e) => {
                    let odp = with_odp(true);
                    if !odp.on_demand.is_empty() {
                        tracing::info!(
                            on_demand = ?odp.on_demand,
                            "verbs server: pinning every region would not fit ({e}); \
                             registering with on-demand paging where the device offers it"
                        );
                    }
                    odp
                }
            }
        }
    }
}

/// Parses the soft "Max locked memory" of `/proc/self/limits` (`None` for
/// "unlimited" or when absent).
pub fn parse_memlock(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    line["Max locked memory".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `CapEff` in `/proc/self/status` has `CAP_IPC_LOCK`.
pub fn parse_cap_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// `MemAvailable` of `/proc/meminfo` in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let v = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = v.split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

impl PinBudget {
    /// The budget from the three `/proc` texts.
    pub fn from_proc(limits: &str, status: &str, meminfo: &str) -> PinBudget {
        PinBudget {
            memlock: parse_memlock(limits),
            cap_ipc_lock: parse_cap_ipc_lock(status),
            mem_available: parse_mem_available(meminfo),
        }
    }

    /// This process's budget now (unknown parts as `None`/`false`).
    pub fn current() -> PinBudget {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        PinBudget::from_proc(
            &read("/proc/self/limits"),
            &read("/proc/self/status"),
            &read("/proc/meminfo"),
        )
    }
}

/// Bytes in binary units with one decimal (`12.0 GiB`).
pub fn human(bytes: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Refuses a plan the host cannot pin, with the numbers and the fix.
pub fn check(plan: &PinPlan, budget: &PinBudget) -> Result<(), VerbsError> {
    if plan.pinning.is_empty() {
        return Ok(());
    }
    let mut what = format!(
        "this node serves {} in {} files and registers them on {}",
        human(plan.bytes),
        plan.regions,
        plan.pinning.join(", ")
    );
    if plan.pinning.len() > 1 {
        what += &format!(
            " (each device's registration pins them again: {} in all)",
            human(plan.memlock_needed())
        );
    }
    if !plan.on_demand.is_empty() {
        what += &format!("; {} use on-demand paging", plan.on_demand.join(", "));
    }
    if let (Some(limit), false) = (budget.memlock, budget.cap_ipc_lock) {
        if plan.memlock_needed() > limit {
            return Err(VerbsError::Pinning {
                detail: format!(
                    "{what}, but RLIMIT_MEMLOCK is {} ({limit} bytes) and pinning needs {} ({} bytes). \
                     Raise the limit for the node's process: `ulimit -l unlimited` in the shell that starts it, \
                     LimitMEMLOCK=infinity in its systemd unit, `<user> - memlock unlimited` in \
                     /etc/security/limits.conf (then log in again), or `--ulimit memlock=-1` for a container; \
                     or serve fewer files per node, or (opt-in, see the README) on devices that offer \
                     on-demand paging set SEQFEED_VERBS_ODP=auto",
                    human(limit),
                    human(plan.memlock_needed()),
                    plan.memlock_needed()
                ),
            });
        }
    }
    if let Some(avail) = budget.mem_available {
        if plan.resident_needed() > avail {
            return Err(VerbsError::Pinning {
                detail: format!(
                    "{what}, but only {} ({avail} bytes) is available (MemAvailable in /proc/meminfo): \
                     registered pages cannot be reclaimed, so the node would be OOM-killed. Serve fewer \
                     files per node (split the dataset over more nodes), add memory, or (opt-in, see the \
                     README) on devices that offer on-demand paging (IBV_ACCESS_ON_DEMAND) set \
                     SEQFEED_VERBS_ODP=auto",
                    human(avail)
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max locked memory         65536                8388608              bytes     \n";
    const MEMINFO: &str =
        "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n";

    fn plan(bytes: u64, pinning: &[&str], odp: &[&str]) -> PinPlan {
        PinPlan {
            bytes,
            regions: 3,
            pinning: pinning.iter().map(|s| s.to_string()).collect(),
            on_demand: odp.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_proc_texts() {
        let b = PinBudget::from_proc(LIMITS, "Name:\tx\nCapEff:\t0000000000000000\n", MEMINFO);
        assert_eq!(
            b,
            PinBudget {
                memlock: Some(65536),
                cap_ipc_lock: false,
                mem_available: Some(8_000_000 * 1024)
            }
        );
        let unlimited = LIMITS.replace("65536    ", "unlimited");
        assert_eq!(parse_memlock(&unlimited), None);
        assert!(parse_cap_ipc_lock("CapEff:\t000001ffffffffff\n"));
        assert!(parse_cap_ipc_lock("CapEff:\t0000000000004000\n"));
        assert!(!parse_cap_ipc_lock("CapEff:\t0000000000003fff\n"));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn refuses_over_memlock_with_numbers_and_fix() {
        let b = PinBudget {
            memlock: Some(64 << 10),
            cap_ipc_lock: false,
            mem_available: Some(64 << 30),
        };
        let e = check(&plan(3 << 30, &["mlx5_0", "mlx5_1"], &[]), &b)
            .expect_err("6 GiB of registrations under a 64 KiB limit");
        let m = e.to_string();
        for want in [
            "3.0 GiB in 3 files",
            "mlx5_0, mlx5_1",
            "6.0 GiB",
            "RLIMIT_MEMLOCK is 64.0 KiB (65536 bytes)",
            "ulimit -l unlimited",
            "LimitMEMLOCK=infinity",
            "/etc/security/limits.conf",
        ] {
            assert!(m.contains(want), "missing {want:?} in: {m}");
        }
        // CAP_IPC_LOCK lifts the limit; unlimited too.
        assert!(check(
            &plan(3 << 30, &["mlx5_0"], &[]),
            &PinBudget {
                cap_ipc_lock: true,
                ..b
            }
        )
        .is_ok());
        assert!(check(
            &plan(3 << 30, &["mlx5_0"], &[]),
            &PinBudget { memlock: None, ..b }
        )
        .is_ok());
        // Exactly at the limit is fine.
        assert!(check(&plan(64 << 10, &["mlx5_0"], &[]), &b).is_ok());
    }

    #[test]
    fn refuses_over_available_memory() {
        let b = PinBudget {
            memlock: None,
            cap_ipc_lock: false,
            mem_available: Some(8 << 30),
        };
        let e = check(&plan(12 << 30, &["rxe0"], &[]), &b).expect_err("12 GiB into 8 GiB");
        let m = e.to_string();
        assert!(
            m.contains("12.0 GiB") && m.contains("8.0 GiB") && m.contains("MemAvailable"),
            "{m}"
        );
        assert!(m.contains("OOM"), "{m}");
    }

    #[test]
    fn on_demand_paging_skips_the_check() {
        let b = PinBudget {
            memlock: Some(1),
            cap_ipc_lock: false,
            mem_available: Some(1),
        };
        let p = plan(1 << 40, &[], &["mlx5_0"]);
        assert_eq!((p.memlock_needed(), p.resident_needed()), (0, 0));
        assert!(check(&p, &b).is_ok());
        // Mixed: only the pinning device counts against the limit.
        let p = plan(1 << 20, &["rxe0"], &["mlx5_0"]);
        assert_eq!(p.memlock_needed(), 1 << 20);
        let m = check(&p, &b).expect_err("pins on rxe0").to_string();
        assert!(m.contains("mlx5_0 use on-demand paging"), "{m}");
    }

    #[test]
    fn odp_is_opt_in_and_auto_uses_it_only_when_pinning_does_not_fit() {
        let devs = [("mlx5_0".to_string(), true), ("rxe0".to_string(), false)];
        let roomy = PinBudget {
            memlock: None,
            cap_ipc_lock: false,
            mem_available: Some(64 << 30),
        };
        let tight = PinBudget {
            memlock: Some(64 << 10),
            ..roomy
        };
        let names = |p: &PinPlan| (p.pinning.clone(), p.on_demand.clone());
        let both = (vec!["mlx5_0".to_string(), "rxe0".to_string()], vec![]);
        let split = (vec!["rxe0".to_string()], vec!["mlx5_0".to_string()]);
        // The default pins even when pinning does not fit (check() then refuses).
        assert_eq!(OdpPolicy::default(), OdpPolicy::Never);
        assert_eq!(
            names(&choose(&devs, 1 << 30, 3, OdpPolicy::default(), &tight)),
            both
        );
        assert!(check(
            &choose(&devs, 1 << 30, 3, OdpPolicy::default(), &tight),
            &tight
        )
        .is_err());
        // Auto (explicit): pin while it fits, ODP on the offering device once it does not.
        assert_eq!(
            names(&choose(&devs, 1 << 30, 3, OdpPolicy::Auto, &roomy)),
            both
        );
        assert_eq!(
            names(&choose(&devs, 1 << 30, 3, OdpPolicy::Auto, &tight)),
            split
        );
        // Forced either way.
        assert_eq!(
            names(&choose(&devs, 1 << 30, 3, OdpPolicy::Always, &roomy)),
            split
        );
        assert_eq!(
            names(&choose(&devs, 1 << 30, 3, OdpPolicy::Never, &tight)),
            both
        );
        // Too big for RAM: ODP devices go on demand, the pinning one still refuses.
        let p = choose(&devs, 128 << 30, 3, OdpPolicy::Auto, &roomy);
        assert_eq!(names(&p), split);
        assert!(check(&p, &roomy).is_err());
    }

    #[test]
    fn odp_policy_parses() {
        assert_eq!(OdpPolicy::parse("").unwrap(), OdpPolicy::Never);
        assert_eq!(OdpPolicy::parse("never").unwrap(), OdpPolicy::Never);
        assert_eq!(OdpPolicy::parse(" AUTO ").unwrap(), OdpPolicy::Auto);
        assert_eq!(OdpPolicy::parse("always").unwrap(), OdpPolicy::Always);
        // Unset: never (ODP is opt-in).
        assert_eq!(OdpPolicy::from_lookup(|_| None).unwrap(), OdpPolicy::Never);
        assert_eq!(
            OdpPolicy::from_lookup(|k| (k == ODP_ENV).then(|| "auto".into())).unwrap(),
            OdpPolicy::Auto
        );
        assert_eq!(OdpPolicy::parse("1").unwrap(), OdpPolicy::Always);
        assert_eq!(OdpPolicy::parse("off").unwrap(), OdpPolicy::Never);
        let e = OdpPolicy::parse("maybe").unwrap_err();
        assert!(e.contains(ODP_ENV) && e.contains("\"maybe\""), "{e}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(65536), "64.0 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
