#!/usr/bin/env python3
"""Materialized mixture plan, the way Megatron-LM and OLMo build theirs.

The reference for `cargo bench -p seqfeed-benches --bench plan`. Given the
same sources (sizes, quotas, file counts) as the Rust plan, it builds:

  * per source, a shuffle index over all of its draws: one permutation of the
    source per epoch, concatenated and cut at the quota (Megatron's
    `shuffle_index`, uint32 when it fits);
  * the blend index: `dataset_index` (int16) and `dataset_sample_index`
    (int64) over every position of the run (Megatron's BlendedDataset);
  * one global permutation of all positions (`rng.permutation(N)`, int64, as
    OLMo's global indices), applied to the blend index;

then resolves step 0 of rank 0 to (source, file, index, offset), and measures
a vectorized resolution rate over the materialized arrays.

Prints `key value` lines: open_s (wall), open_cpu_s, import_s, peak_rss, base_rss, rate,
step0 (a checksum). Exits 3 with a message on stderr when numpy is missing.
"""
import argparse
import os
import resource
import sys
import time

t_import = time.perf_counter()
try:
    import numpy as np
except ImportError:
    sys.stderr.write(
        "numpy is not installed for %s; install it (apt-get install -y python3-numpy, "
        "or pip install numpy) to measure the materialized baseline\n" % sys.executable
    )
    sys.exit(3)
import_s = time.perf_counter() - t_import


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", required=True, help="comma-separated sequences per source")
    ap.add_argument("--quotas", required=True, help="comma-separated quota per source")
    ap.add_argument("--files", required=True, help="comma-separated sequences per file, per source")
    ap.add_argument("--seq-bytes", type=int, required=True)
    ap.add_argument("--data-offset", type=int, default=4096)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rate-positions", type=int, default=10_000_000)
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    quotas = [int(x) for x in a.quotas.split(",")]
    per_file = [int(x) for x in a.files.split(",")]
    n = sum(quotas)
    base_rss = rss_kib("VmRSS")

    t0 = time.perf_counter()
    c0 = time.process_time()
    rng = np.random.default_rng(a.seed)
    # Per-source shuffle index over all draws (epochs concatenated).
    shuffles = []
    for size, quota in zip(sizes, quotas):
        dtype = np.uint32 if size < 2**32 - 1 else np.int64
        epochs = -(-quota // size)
        parts = [rng.permutation(size).astype(dtype, copy=False) for _ in range(epochs)]
        s = np.concatenate(parts)[:quota] if epochs > 1 else parts[0][:quota]
        del parts
        shuffles.append(s)
    # Blend index over all positions (sorted by source), then one global shuffle.
    dataset_index = np.repeat(np.arange(len(quotas), dtype=np.int16), quotas)
    dataset_sample_index = np.concatenate([np.arange(q, dtype=np.int64) for q in quotas])
    perm = rng.permutation(n)
    dataset_index = dataset_index[perm]
    dataset_sample_index = dataset_sample_index[perm]
    file_starts = [np.arange(0, size, pf, dtype=np.int64) for size, pf in zip(sizes, per_file)]

    def resolve(positions):
        src = dataset_index[positions]
        k = dataset_sample_index[positions]
        idx = np.empty_like(k)
        fil = np.empty_like(k)
        for i, (sh, fs) in enumerate(zip(shuffles, file_starts)):
            m = src == i
            idx[m] = sh[k[m]]
            fil[m] = np.searchsorted(fs, idx[m], side="right") - 1
            idx[m] -= fs[fil[m]]
        return src, fil, idx, a.data_offset + idx * a.seq_bytes

    per_rank = a.batch // a.world
    src, fil, idx, off = resolve(np.arange(0, per_rank))
    open_s = time.perf_counter() - t0
    open_cpu_s = time.process_time() - c0
    step0 = int(src.sum() + fil.sum() + idx.sum())

    # Vectorized resolution rate over the materialized arrays (one core).
    m = min(a.rate_positions, n)
    start = (n // 2) - (n // 2) % a.batch
    positions = np.arange(start, min(start + m, n))
    t1 = time.perf_counter()
    c1 = time.thread_time()
    src, fil, idx, off = resolve(positions)
    cpu = time.thread_time() - c1
    wall = time.perf_counter() - t1
    rate = len(positions) / (cpu if cpu >= 0.2 else wall)
    peak = max(rss_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    print("open_s", open_s)
    print("open_cpu_s", open_cpu_s)
    print("import_s", import_s)
    print("peak_rss", peak * 1024)
    print("base_rss", base_rss * 1024)
    print("rate", rate)
    print("rate_wall", len(positions) / wall)
    print("step0", step0)
    print("positions", n)


if __name__ == "__main__":
    main()
