//! Pack throughput: a headerless u32 token array into a u16 source (checking
//! every id, CRC32C per sequence, blake3 over the payload, temp + rename,
//! fsync), as a ratio to a plain sequential copy of the same input bytes to a
//! file (read + write + fsync) measured in the same run. Target: >= 0.5x.
//!
//! `SEQFEED_BENCH_MB` sets the input size in MiB (default 128).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;

use seqfeed_benches::{best_of, print_ratio, rate};
use seqfeed_format::{pack_inputs, Dtype, InDtype, Input, InputKind, PackOptions};

fn copy_file(from: &Path, to: &Path) {
    let mut r = std::fs::File::open(from).unwrap();
    let mut w = std::fs::File::create(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).unwrap();
    }
    w.sync_all().unwrap();
}

fn main() {
    let mb: u64 = std::env::var("SEQFEED_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let iters = 3;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tokens.u32");
    let n_tokens = (mb << 20) / 4;
    let mut x = 0x1234_5678u32;
    let tokens: Vec<u8> = (0..n_tokens)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 50_257).to_le_bytes()
        })
        .collect();
    std::fs::write(&input, &tokens).unwrap();
    drop(tokens);
    let bytes = n_tokens * 4;
    println!("pack benchmark: {mb} MiB u32 input -> u16 sequences of 2048 tokens, best of {iters}");

    // Warm the page cache for both.
    copy_file(&input, &dir.path().join("warm"));
    std::fs::remove_file(dir.path().join("warm")).unwrap();

    let copy_out = dir.path().join("copy");
    let copy = best_of(iters, || {
        copy_file(&input, &copy_out);
        std::fs::remove_file(&copy_out).unwrap();
    });

    let out = dir.path().join("src");
    let opts = PackOptions::new("bench", Dtype::U16, 2048).eos(50_256);
    let inputs = [Input {
        path: input.clone(),
        kind: InputKind::Raw(InDtype::U32),
    }];
    let pack = best_of(iters, || {
        let (src, _) = pack_inputs(&inputs, &opts, &out, &|_| {}).unwrap();
        drop(src);
        std::fs::remove_dir_all(&out).unwrap();
    });

    let copy_rate = rate(bytes, copy);
    let pack_rate = rate(bytes, pack);
    println!(
        "copy (read+write+fsync)   {:>8.1} MB/s of input",
        copy_rate / 1e6
    );
    println!(
        "pack u32 -> u16           {:>8.1} MB/s of input",
        pack_rate / 1e6
    );
    print_ratio(
        "pack throughput (input bytes/s)",
        pack_rate,
        copy_rate,
        "sequential copy",
        Some(0.5),
    );
}
