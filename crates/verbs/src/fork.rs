//! Fork safety of registered memory.
//!
//! A registration pins pages; after `fork()`, the kernel marks the parent's
//! pages copy-on-write, and the first write by the parent to a pinned page
//! gives the parent a new copy while the NIC keeps writing the old one (now
//! the child's): RDMA READs would land where the parent never looks. Linux
//! 5.13+ copies pinned pages at fork instead (`ibv_is_fork_initialized()`
//! answers `IBV_FORK_UNNEEDED`); on older kernels libibverbs must mark every
//! registration `MADV_DONTFORK`, which `ibv_fork_init()` turns on, and only
//! before the process has created any verbs object.
//!
//! So [`ensure`] runs once, before this crate opens a device: unless fork
//! protection is unneeded or already on, it calls `ibv_fork_init()`. Where
//! that fails (another library of the process used verbs first, or
//! libibverbs lacks it), the process is unprotected: a `pthread_atfork`
//! handler then notes any fork, and [`usable`] makes the client refuse with
//! a clear error afterwards. A forked child never uses its parent's
//! transports either (their owner's pid differs).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rdma_mummy_sys as sys;

/// How this process stands against fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForkProtection {
    /// The kernel copies pinned pages at fork (Linux 5.13+).
    Unneeded,
    /// `ibv_fork_init` is in effect (registrations are `MADV_DONTFORK`).
    Enabled,
    /// Neither: a fork after registration would corrupt reads.
    Unprotected {
        /// Why `ibv_fork_init` did not help.
        why: String,
    },
}

/// Decides the protection from `ibv_is_fork_initialized()`'s answer
/// (`status`), calling `fork_init` (`ibv_fork_init`, returning 0 or an
/// errno) only when it is needed.
pub(crate) fn decide(
    status: sys::ibv_fork_status,
    fork_init: impl FnOnce() -> i32,
) -> ForkProtection {
    match status {
        sys::IBV_FORK_UNNEEDED => ForkProtection::Unneeded,
        sys::IBV_FORK_ENABLED => ForkProtection::Enabled,
        _ => match fork_init() {
            0 => ForkProtection::Enabled,
            rc => {
                let e = std::io::Error::from_raw_os_error(rc);
                let why = if rc == libc::EINVAL {
                    format!(
                        "ibv_fork_init failed ({e}): too late, something in this process used \
                         libibverbs before seqfeed (set RDMAV_FORK_SAFE=1 in the environment to \
                         have libibverbs enable it at its start)"
                    )
                } else {
                    format!("ibv_fork_init failed ({e})")
                };
                ForkProtection::Unprotected { why }
            }
        },
    }
}

/// Set by the `pthread_atfork` handler when an unprotected process forks.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_fork() {
    FORKED.store(true, Ordering::SeqCst);
}

static STATE: OnceLock<ForkProtection> = OnceLock::new();

/// Fork protection for this process, set up on the first call (before this
/// crate opens any device); logs once when the process is unprotected.
pub(crate) fn ensure() -> &'static ForkProtection {
    STATE.get_or_init(|| {
        // SAFETY: both take no arguments; rdma-mummy-sys answers
        // IBV_FORK_DISABLED / EOPNOTSUPP itself when libibverbs (or the
        // symbol, rdma-core < 35) is missing. ibv_fork_init only sets up
        // libibverbs' bookkeeping of registered ranges.
        let p = decide(unsafe { sys::ibv_is_fork_initialized() }, || unsafe {
            sys::ibv_fork_init()
        });
        if let ForkProtection::Unprotected { why } = &p {
            // SAFETY: `note_fork` is an `extern "C" fn()` that only stores to an
            // atomic (async-signal-safe, as a fork handler must be); it stays
            // valid for the life of the process.
            let rc = unsafe { libc::pthread_atfork(None, Some(note_fork), None) };
            if rc != 0 {
                // Without the handler a fork would go unnoticed: count it as one.
                FORKED.store(true, Ordering::SeqCst);
            }
            tracing::warn!(
                "verbs: registered memory is not fork-safe in this process: {why}; if it forks \
                 (e.g. DataLoader workers started with fork, or a subprocess), the RDMA client \
                 refuses to read afterwards"
            );
        } else {
            tracing::debug!("verbs: fork protection {p:?}");
        }
        p
    })
}

/// Whether a transport made in process `owner_pid` may run now in process
/// `pid`, given the protection and whether the process has forked since.
pub(crate) fn judge(
    owner_pid: u32,
    pid: u32,
    protection: &ForkProtection,
    forked: bool,
) -> Result<(), String> {
    if pid != owner_pid {
        return Err(format!(
            "this RDMA transport was made in process {owner_pid} and cannot be used in its forked \
             child {pid} (the child shares none of its queue pairs or registrations): create the \
             loader in the child, or start workers with the spawn method"
        ));
    }
    if let (ForkProtection::Unprotected { why }, true) = (protection, forked) {
        return Err(format!(
            "this process forked while its RDMA registrations were not fork-safe ({why}), so \
             reads could land in the child's copy of the pages: refusing. Use Linux 5.13+ \
             (copy-on-fork of pinned pages), set RDMAV_FORK_SAFE=1 before the process starts, \
             or do not fork (start workers with spawn)"
        ));
    }
    Ok(())
}

/// [`judge`] for this process now.
pub(crate) fn usable(owner_pid: u32) -> Result<(), String> {
    judge(
        owner_pid,
        std::process::id(),
        ensure(),
        FORKED.load(Ordering::SeqCst),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_init_is_called_only_when_needed_and_its_failure_explained() {
        let never = || -> i32 { panic!("ibv_fork_init must not be called") };
        assert_eq!(
            decide(sys::IBV_FORK_UNNEEDED, never),
            ForkProtection::Unneeded
        );
        assert_eq!(
            decide(sys::IBV_FORK_ENABLED, never),
            ForkProtection::Enabled
        );
        assert_eq!(
            decide(sys::IBV_FORK_DISABLED, || 0),
            ForkProtection::Enabled
        );
        match decide(sys::IBV_FORK_DISABLED, || libc::EINVAL) {
            ForkProtection::Unprotected { why } => {
                assert!(
                    why.contains("too late") && why.contains("RDMAV_FORK_SAFE"),
                    "{why}"
                )
            }
            p => panic!("{p:?}"),
        }
        match decide(sys::IBV_FORK_DISABLED, || libc::EOPNOTSUPP) {
            ForkProtection::Unprotected { why } => assert!(why.contains("ibv_fork_init"), "{why}"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn a_forked_child_or_an_unprotected_forked_parent_refuses() {
        let un = ForkProtection::Unprotected { why: "x".into() };
        assert_eq!(judge(7, 7, &ForkProtection::Unneeded, true), Ok(()));
        assert_eq!(judge(7, 7, &ForkProtection::Enabled, true), Ok(()));
        assert_eq!(judge(7, 7, &un, false), Ok(()));
        let e = judge(7, 7, &un, true).unwrap_err();
        assert!(e.contains("forked") && e.contains("RDMAV_FORK_SAFE"), "{e}");
        let e = judge(7, 8, &ForkProtection::Unneeded, false).unwrap_err();
        assert!(e.contains("process 7") && e.contains("child 8"), "{e}");
    }

    /// This host's answer (no RDMA device needed): `ensure` never fails or
    /// panics, and this process, which has not forked, may use verbs.
    #[test]
    fn ensure_runs_here() {
        let p = ensure();
        eprintln!("fork protection here: {p:?}");
        if !matches!(p, ForkProtection::Unprotected { .. }) || !FORKED.load(Ordering::SeqCst) {
            assert_eq!(usable(std::process::id()), Ok(()));
        }
    }

    /// The atfork handler notes a real fork (the child exits at once).
    #[test]
    fn the_fork_handler_notices_a_fork() {
        // SAFETY: as in `ensure`: the handler only stores to an atomic.
        let rc = unsafe { libc::pthread_atfork(None, Some(note_fork), None) };
        assert_eq!(rc, 0);
        // SAFETY: the child calls only `_exit` (async-signal-safe) and the parent
        // reaps it; nothing else runs in the child of this multi-threaded process.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once, without running Rust's exit handlers.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for the child just made, writing one int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(FORKED.load(Ordering::SeqCst));
    }
}
