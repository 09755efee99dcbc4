//! Shared helpers for the cross-crate integration tests under `tests/tests/`.
#![forbid(unsafe_code)]
