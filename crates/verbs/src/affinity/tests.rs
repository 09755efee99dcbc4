//! Affinity on synthetic sysfs trees: directories and relative symlinks laid
//! out as Linux has them (`class/infiniband/<dev>` -> the device's
//! `infiniband/<dev>` directory under its PCI function, whose `device` links
//! back to the function; `bus/pci/devices/<bdf>` -> the function).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in [
            "devices/virtual/infiniband",
            "bus/pci/devices",
            "class/infiniband",
        ] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        Tree { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the PCI function at `path` (root first), every level with a
    /// `numa_node`, and its `bus/pci/devices` link.
    fn pci(&self, path: &[String], numa: i32) -> PathBuf {
        let mut p = self.root().join("devices");
        for c in path {
            p.push(c);
            fs::create_dir_all(&p).expect("mkdir");
            fs::write(p.join("numa_node"), format!("{numa}\n")).expect("numa_node");
        }
        let bdf = path.last().expect("path");
        let link = self.root().join("bus/pci/devices").join(bdf);
        if !link.exists() {
            symlink(format!("../../../devices/{}", path.join("/")), link).expect("symlink");
        }
        p
    }

    fn nic(&self, name: &str, path: &[String], numa: i32) {
        let dev = self.pci(path, numa);
        let ib = dev.join("infiniband").join(name);
        fs::create_dir_all(&ib).expect("mkdir");
        symlink(
            format!("../../../{}", path.last().expect("path")),
            ib.join("device"),
        )
        .expect("symlink");
        symlink(
            format!("../../devices/{}/infiniband/{name}", path.join("/")),
            self.root().join("class/infiniband").join(name),
        )
        .expect("symlink");
    }

    /// A software device (rxe): no PCI parent, no `device` link.
    fn soft_nic(&self, name: &str) {
        fs::create_dir_all(self.root().join("devices/virtual/infiniband").join(name))
            .expect("mkdir");
        symlink(
            format!("../../devices/virtual/infiniband/{name}"),
            self.root().join("class/infiniband").join(name),
        )
        .expect("symlink");
    }
}

/// Path to endpoint `k` (0..4) behind PCIe switch `s`: its own root bus,
/// root port, switch upstream port, downstream port `k`, endpoint.
fn behind_switch(s: u32, k: u32) -> Vec<String> {
    let b = s * 0x20;
    vec![
        format!("pci0000:{b:02x}"),
        format!("0000:{b:02x}:01.0"),
        format!("0000:{:02x}:00.0", b + 1),
        format!("0000:{:02x}:{k:02x}.0", b + 2),
        format!("0000:{:02x}:00.0", b + 3 + k),
    ]
}

fn gpu_id(s: u32, k: u32) -> String {
    behind_switch(s, k).last().expect("path").to_uppercase() // CUDA prints upper case
}

/// 8 GPUs and 8 NICs under 4 switches, 2 switches per NUMA node; switch s
/// holds GPUs 2s, 2s+1 (ports 0, 1) and NICs mlx5_{2s}, mlx5_{2s+1} (ports
/// 2, 3). `nic_switches` limits which switches get their NICs.
fn dgx_like(nic_switches: &[u32]) -> Tree {
    let t = Tree::new();
    for s in 0..4 {
        let numa = (s / 2) as i32;
        for k in 0..2 {
            t.pci(&behind_switch(s, k), numa);
        }
        if nic_switches.contains(&s) {
            for k in 0..2 {
                t.nic(
                    &format!("mlx5_{}", 2 * s + k),
                    &behind_switch(s, 2 + k),
                    numa,
                );
            }
        }
    }
    t
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn eight_gpus_take_the_nics_behind_their_switch_one_each() {
    let t = dgx_like(&[0, 1, 2, 3]);
    let mut used = Vec::new();
    for g in 0..8u32 {
        let (s, k) = (g / 2, g % 2);
        let c = choose_nics(t.root(), Some(&gpu_id(s, k)), g as usize, &no_env).expect("choice");
        assert_eq!(
            c.devices,
            vec![format!("mlx5_{g}")],
            "GPU {g}: {}",
            c.reason
        );
        assert_eq!(c.ranking[0].closeness, Closeness::SamePciRoot);
        assert_eq!(
            c.ranking[0].hops,
            Some(4),
            "GPU and NIC on two ports of one switch"
        );
        assert!(c.reason.contains("2 devices tied"), "{}", c.reason);
        // The other socket's NICs rank last.
        assert!(c.ranking[4..]
            .iter()
            .all(|r| r.closeness == Closeness::OtherNuma));
        used.push(c.devices[0].clone());
    }
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 8, "every NIC used once");
}

#[test]
fn fewer_pcie_hops_win_under_one_root() {
    let t = Tree::new();
    let sw = |tail: &[&str]| -> Vec<String> {
        let mut p: Vec<String> = ["pci0000:00", "0000:00:01.0", "0000:01:00.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        p.extend(tail.iter().map(|s| s.to_string()));
        p
    };
    // GPU and mlx5_1 share a second-level switch; mlx5_0 hangs off the first level.
    t.pci(
        &sw(&[
            "0000:02:00.0",
            "0000:03:00.0",
            "0000:04:00.0",
            "0000:05:00.0",
        ]),
        0,
    );
    t.nic(
        "mlx5_1",
        &sw(&[
            "0000:02:00.0",
            "0000:03:00.0",
            "0000:04:01.0",
            "0000:06:00.0",
        ]),
        0,
    );
    t.nic("mlx5_0", &sw(&["0000:02:01.0", "0000:07:00.0"]), 0);
    for rank in 0..2 {
        let c = choose_nics(t.root(), Some("0000:05:00.0"), rank, &no_env).expect("choice");
        assert_eq!(c.devices, vec!["mlx5_1".to_string()], "{}", c.reason);
        assert_eq!(
            c.ranking.iter().map(|r| r.hops).collect::<Vec<_>>(),
            vec![Some(4), Some(6)]
        );
        assert!(!c.reason.contains("tied"), "{}", c.reason);
    }
}

#[test]
fn nic_less_socket_spreads_over_the_other_sockets_nics() {
    // NICs only behind switches 0 and 1 (NUMA node 0); GPUs 4..7 sit on node 1.
    let t = dgx_like(&[0, 1]);
    let mut used = Vec::new();
    for g in 4..8u32 {
        let c = choose_nics(t.root(), Some(&gpu_id(g / 2, g % 2)), g as usize, &no_env)
            .expect("choice");
        assert_eq!(c.ranking[0].closeness, Closeness::OtherNuma, "{}", c.reason);
        assert!(c.reason.contains("no device on GPU"), "{}", c.reason);
        assert!(c.reason.contains("4 devices tied"), "{}", c.reason);
        used.push(c.devices[0].clone());
    }
    assert_eq!(used, ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]);
}

#[test]
fn same_numa_node_beats_the_other_socket() {
    // Switch 1 (node 0) has GPUs but no NICs; switch 0 (node 0) and 2 (node 1) have NICs.
    let t = dgx_like(&[0, 2]);
    for (g, want) in [(2u32, "mlx5_0"), (3, "mlx5_1")] {
        let c =
            choose_nics(t.root(), Some(&gpu_id(1, g % 2)), g as usize, &no_env).expect("choice");
        assert_eq!(c.devices, vec![want.to_string()], "{}", c.reason);
        assert_eq!(c.ranking[0].closeness, Closeness::SameNuma);
        assert_eq!(c.ranking[2].closeness, Closeness::OtherNuma);
        assert!(c.reason.contains("same NUMA node 0"), "{}", c.reason);
    }
}

#[test]
fn env_overrides_per_local_rank() {
    let t = dgx_like(&[0, 1, 2, 3]);
    let vars: HashMap<&str, &str> = [
        ("SEQFEED_NICS", "mlx5_1, mlx5_0+mlx5_2"),
        ("SEQFEED_NICS_LOCAL_RANK_3", "mlx5_7"),
    ]
    .into_iter()
    .collect();
    let env = |k: &str| vars.get(k).map(|v| v.to_string());
    let gpu = gpu_id(0, 0);
    let pick = |rank| choose_nics(t.root(), Some(&gpu), rank, &env).expect("choice");
    assert_eq!(pick(0).devices, ["mlx5_1"]);
    assert_eq!(pick(1).devices, ["mlx5_0", "mlx5_2"]);
    assert_eq!(pick(2).devices, ["mlx5_1"], "the list wraps");
    let c = pick(3);
    assert_eq!(c.devices, ["mlx5_7"], "the per-rank variable wins");
    assert!(
        c.reason.contains("SEQFEED_NICS_LOCAL_RANK_3"),
        "{}",
        c.reason
    );
    assert!(c.ranking.is_empty());

    let bad = |k: &str| (k == "SEQFEED_NICS").then(|| "mlx5_0,mlx5_9".to_string());
    let e = choose_nics(t.root(), Some(&gpu), 1, &bad).expect_err("unknown device");
    let msg = e.to_string();
    assert!(
        msg.contains("mlx5_9") && msg.contains("SEQFEED_NICS"),
        "{msg}"
    );
}

#[test]
fn without_gpu_or_pci_location_round_robin() {
    let t = Tree::new();
    t.soft_nic("rxe0");
    t.soft_nic("rxe1");
    let c = choose_nics(t.root(), None, 3, &no_env).expect("choice");
    assert_eq!(c.devices, ["rxe1"]);
    assert_eq!(c.ranking[0].closeness, Closeness::Unknown);
    assert!(c.reason.contains("no GPU bus id"), "{}", c.reason);
    // A GPU sysfs does not know is an error naming it.
    let e = choose_nics(t.root(), Some("0000:99:00.0"), 0, &no_env).expect_err("unknown GPU");
    assert!(e.to_string().contains("0000:99:00.0"), "{e}");
    // No RDMA device at all.
    let empty = Tree::new();
    let e = choose_nics(empty.root(), None, 0, &no_env).expect_err("no device");
    assert!(e.to_string().contains("no RDMA device"), "{e}");
}

#[test]
fn bus_ids_and_local_rank() {
    assert_eq!(
        normalize_bus_id("0000:3B:00.0").as_deref(),
        Some("0000:3b:00.0")
    );
    assert_eq!(
        normalize_bus_id("00000000:3b:00.0").as_deref(),
        Some("0000:3b:00.0")
    );
    assert_eq!(normalize_bus_id("3b:00.1").as_deref(), Some("0000:3b:00.1"));
    assert_eq!(
        normalize_bus_id("0000:3b:20.0"),
        None,
        "device numbers stop at 31"
    );
    assert_eq!(normalize_bus_id("GPU-1234"), None);
    let env = |k: &str| (k == "SLURM_LOCALID").then(|| "5".to_string());
    assert_eq!(local_rank_from_env(&env), Some(5));
    assert_eq!(local_rank_from_env(&no_env), None);
}

#[test]
fn a_rank_s_devices_explicit_then_env_then_gpu_then_all() {
    let t = dgx_like(&[0, 1, 2, 3]);
    let devices = |gpu: Option<&str>,
                   rank,
                   explicit: Option<&[String]>,
                   env: &dyn Fn(&str) -> Option<String>| {
        devices_for_rank(t.root(), gpu, rank, explicit, env)
            .expect("devices")
            .map(|c| c.devices)
    };
    let gpu5 = gpu_id(2, 1);
    // A CPU rank with nothing set: every ACTIVE device, as before.
    assert_eq!(devices(None, 0, None, &no_env), None);
    assert_eq!(
        devices(None, 0, Some(&[]), &no_env),
        None,
        "empty = not given"
    );
    // A GPU rank: the NIC behind its switch.
    assert_eq!(
        devices(Some(&gpu5), 5, None, &no_env),
        Some(vec!["mlx5_5".into()])
    );
    // Explicit devices win over the GPU and the environment, as given.
    let env = |k: &str| (k == "SEQFEED_NICS").then(|| "mlx5_7".to_string());
    let given = ["mlx5_0".to_string(), "mlx5_3".to_string()];
    assert_eq!(
        devices(Some(&gpu5), 5, Some(&given), &env),
        Some(given.to_vec())
    );
    // The environment overrides the GPU's choice, and applies to CPU ranks.
    assert_eq!(
        devices(Some(&gpu5), 5, None, &env),
        Some(vec!["mlx5_7".into()])
    );
    assert_eq!(devices(None, 2, None, &env), Some(vec!["mlx5_7".into()]));
    // An override naming a missing device is an error, GPU or not.
    let bad = |k: &str| (k == "SEQFEED_NICS_LOCAL_RANK_1").then(|| "mlx5_9".to_string());
    for gpu in [None, Some(gpu5.as_str())] {
        let e = devices_for_rank(t.root(), gpu, 1, None, &bad).expect_err("missing device");
        assert!(e.to_string().contains("mlx5_9"), "{e}");
    }
    // A GPU sysfs cannot place (a container's partial /sys): every device.
    assert_eq!(devices(Some("0000:99:00.0"), 0, None, &no_env), None);
    // No RDMA device listed at all: every device (the transport reports it).
    let empty = Tree::new();
    let none = devices_for_rank(empty.root(), Some(&gpu5), 0, None, &no_env).expect("fallback");
    assert_eq!(none, None);
}
