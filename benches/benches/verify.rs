//! Verify throughput: `Source::verify` (CRC32C of every sequence + blake3 of
//! every payload) as a ratio to blake3's own single-threaded hashing speed
//! over the same mapped payload bytes, measured in the same run.
//!
//! `SEQFEED_BENCH_MB` sets the payload size in MiB (default 256).
#![allow(clippy::unwrap_used)]

use seqfeed_benches::{best_of, print_ratio, rate};
use seqfeed_format::{write_synthetic_source, Dtype, Source};

fn main() {
    let mb: u64 = std::env::var("SEQFEED_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let iters = 3;
    let dir = tempfile::tempdir().unwrap();
    let seq_len = 2048u64;
    let count = (mb << 20) / (seq_len * 2);
    let path = dir.path().join("v");
    // 256 MiB files so the source has several.
    write_synthetic_source(&path, "v", Dtype::U16, seq_len, count, 1, 256 << 20).unwrap();
    let src = Source::open(&path).unwrap();
    let bytes = src.payload_bytes();
    println!(
        "verify benchmark: {} MiB payload in {} files, best of {iters}",
        bytes >> 20,
        src.files().len()
    );

    // Touch everything once so both runs read from the page cache.
    src.verify(&|_| {}).unwrap();
    let mut sink = 0u8;
    let hash = best_of(iters, || {
        for f in src.files() {
            sink ^= blake3::hash(f.payload()).as_bytes()[0];
        }
    });
    let verify = best_of(iters, || src.verify(&|_| {}).unwrap());
    let crc = best_of(iters, || {
        for f in src.files() {
            for s in f.payload().chunks_exact(f.seq_bytes() as usize) {
                sink ^= crc32c::crc32c(s) as u8;
            }
        }
    });
    std::hint::black_box(sink);
    println!(
        "blake3::hash              {:>8.1} MB/s",
        rate(bytes, hash) / 1e6
    );
    println!(
        "crc32c per sequence       {:>8.1} MB/s",
        rate(bytes, crc) / 1e6
    );
    println!(
        "Source::verify            {:>8.1} MB/s",
        rate(bytes, verify) / 1e6
    );
    print_ratio(
        "verify throughput (bytes/s)",
        rate(bytes, verify),
        rate(bytes, hash),
        "blake3 alone",
        None,
    );
}
