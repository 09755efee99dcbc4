//! With `SEQFEED_NO_CUDA=1` the crate reports "no CUDA" on any machine, GPU
//! or not, and every entry point answers with `NotAvailable` (own process:
//! the probe is cached per process, and this file has a single test).

#![allow(clippy::unwrap_used)]

use seqfeed_cuda::{choose_path, gpu_side, probe, Device, DevicePath, TransportCaps};

#[test]
fn disabled_by_env_reports_not_available_everywhere() {
    // Single test in this binary, set before the first probe: no race.
    std::env::set_var(seqfeed_cuda::DISABLE_ENV, "1");
    let reason = probe()
        .unavailable_reason()
        .expect("disabled probe must be NotAvailable");
    assert_eq!(reason, "disabled by SEQFEED_NO_CUDA");
    let e = Device::open(0).unwrap_err();
    assert!(e.is_not_available());
    assert_eq!(
        e.to_string(),
        "CUDA is not available: disabled by SEQFEED_NO_CUDA"
    );
    let e = Device::from_local_rank().unwrap_err();
    assert!(e.is_not_available(), "{e}");
    let c = choose_path(&gpu_side(0), &TransportCaps::rdma("verbs", true), None).unwrap();
    assert_eq!(c.path(), DevicePath::Host);
    assert!(
        c.summary().contains("disabled by SEQFEED_NO_CUDA"),
        "{}",
        c.summary()
    );
}
