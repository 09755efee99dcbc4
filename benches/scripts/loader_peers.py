#!/usr/bin/env python3
"""seqfeed's Python loader against three peer loaders, in one run (issue 17).

One corpus on local disk, read by five loaders as Megatron batches of
micro_batch 8 x seq_len 4096: the four tensors Megatron's GPTDataset gives
with create_attention_mask=False (tokens = input_ids int64 [8, 4096], labels
int64 [8, 4096], loss_mask float32 [8, 4096], position_ids int64 [8, 4096]).

  seqfeed-local   seqfeed.Loader(transport="local", labels=True, eod_token,
                  micro_batch 8, dtype="int64"), batch.as_dict(format="megatron")
  seqfeed-tcp     the same over tcp to a `seqfeed serve --listen 127.0.0.1:0
                  --addr-file F` that this script starts (its CPU is counted)
  megatron        megatron-core GPTDataset (BlendedMegatronDatasetBuilder,
                  create_attention_mask=False, index cache in a fresh temp dir)
                  + torch DataLoader(batch_size 8, num_workers 2, pin_memory)
  mosaic          MosaicML streaming: StreamingDataset(local=MDS dir, remote=None,
                  shuffle=False) over MDS written by MDSWriter (column
                  ndarray:uint16:4097, no compression) + StreamingDataLoader
                  (num_workers 2, pin_memory)
  litdata         litdata StreamingDataset(item_loader=TokensLoader(block_size
                  4097), shuffle=False) over chunks written by litdata.optimize
                  (TokensLoader) + StreamingDataLoader (num_workers 2, pin_memory)

The data: megatron_gptdataset.py --make-corpus writes an MMIDIDX corpus;
`seqfeed pack --seq-len 4097` packs it; the MDS and litdata copies are
written from the packed sequences themselves (same rows, same order), so
seqfeed, mosaic and litdata read the very same 4097-token rows. Megatron
reads the MMIDIDX corpus and cuts its own overlapping 4097-token samples, so
its rows are the same tokens cut elsewhere. mosaic and litdata hand out one
uint16 row per sample; their DataLoader's collate_fn (in the workers, once
per batch) builds the four Megatron tensors from the stacked rows, as a user
of those libraries would (Megatron builds them per sample, in its
__getitem__; seqfeed in the consumer: labels, loss_mask, position_ids).

Every loader runs in a fresh process (imports done before any clock) and each
batch is touched the same way: one element of each of the four tensors read
through .item(). The first batch of each loader is checked: keys, shapes,
dtypes, labels = tokens shifted by one, loss_mask all ones, position_ids
0..4095, and for seqfeed/mosaic/litdata that each row (tokens + last label)
is a row of the packed corpus (mosaic and litdata, read in order: rows 0..7).

Measured per loader (rounds interleaved, order reversed every other round;
best of --rounds kept per loader):
  samples/s       steady state: after --warmup batches, for --target-s seconds
                  or until one pass over the data ends (mosaic/litdata read at
                  most one epoch; seqfeed's plan and Megatron's index span many)
  CPU s / 1k      CPU seconds (user + system) of the whole process tree over
                  the same steady interval: the benchmark process, its children
                  (DataLoader workers) and, for seqfeed-tcp, the seqfeed serve
                  process; psutil, sampled at the start and end of the interval
  first batch s   from before the dataset/loader objects are built (imports
                  done) to the first batch in hand: Megatron's index build,
                  MDS/litdata index open, worker start, seqfeed plan open and
                  connect all count
Ratios are against seqfeed-local measured in the same run.

Part 2 (unless --skip-overhead): the "Python overhead vs the Rust loader at
64 KiB local steps" ratio of python_loader.py (its functions): seqfeed.Loader
(dtype=native) against `seqfeed read --local`, global_batch 8 (8 x 4097 u16 =
64 KiB per step), same plan and steps, interleaved, best of --rounds.

  benches/scripts/loader_peers.sh                 # small scale, < 2 min once the data is written
  benches/scripts/loader_peers.sh --scale 8       # 8x the corpus and the measuring time

The data is kept in --work (default: $TMPDIR/seqfeed-loader-peers-s<scale>)
and reused when present (the first run writes it: about 30-60 s on a busy
2-core host); --fresh rewrites it. Output: the table, then one JSON line.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from megatron_gptdataset import CORPUS_NAME, StubTokenizer, find_seqfeed_bin  # noqa: E402

SOURCE = "corpus"
SEQ_LEN = 4096
PACK_LEN = SEQ_LEN + 1
MICRO = 8
LOADERS = ("seqfeed-local", "seqfeed-tcp", "megatron", "mosaic", "litdata")
PEERS = ("megatron", "mosaic", "litdata")
KEYS = ("tokens", "labels", "loss_mask", "position_ids")
EXPECT = {
    "tokens": ([MICRO, SEQ_LEN], "torch.int64"),
    "labels": ([MICRO, SEQ_LEN], "torch.int64"),
    "loss_mask": ([MICRO, SEQ_LEN], "torch.float32"),
    "position_ids": ([MICRO, SEQ_LEN], "torch.int64"),
}


def log(msg):
    sys.stderr.write("[loader_peers] " + msg + "\n")
    sys.stderr.flush()


def die(msg):
    log("error: " + msg)
    sys.exit(1)


# --------------------------------------------------------------------------- packed rows


def packed_files(dataset):
    """(path, data_offset, count) of the packed source's files, in order."""
    src = os.path.join(dataset, SOURCE)
    with open(os.path.join(src, "manifest.json")) as f:
        m = json.load(f)
    if m["seq_len"] != PACK_LEN or m["dtype"] != "u16":
        die("packed source is %s x %s, expected u16 x %d" % (m["dtype"], m["seq_len"], PACK_LEN))
    return [(os.path.join(src, e["path"]), e["data_offset"], e["count"]) for e in m["files"]]


def packed_rows(files):
    """All packed rows as one [n, 4097] uint16 array (memory-mapped, no copy)."""
    import numpy as np

    parts = [np.memmap(p, dtype=np.uint16, mode="r", offset=off, shape=(n, PACK_LEN)) for p, off, n in files]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def row_hash(row_u16_bytes):
    return hashlib.blake2b(row_u16_bytes, digest_size=16).hexdigest()


def litdata_chunk_fn(item):
    """litdata.optimize's fn (run in its worker processes): one packed file's
    rows [lo, hi), each yielded as one uint16 row (TokensLoader concatenates
    them; block_size 4097 cuts the same rows back out)."""
    import numpy as np

    path, off, count, lo, hi = item
    rows = np.memmap(path, dtype=np.uint16, mode="r", offset=off, shape=(count, PACK_LEN))
    import torch

    for i in range(lo, hi):
        yield torch.from_numpy(np.array(rows[i]))


# --------------------------------------------------------------------------- workers
# `loader_peers.py --worker KIND JSON` in a fresh process; one JSON line out.


def megatron_collate(rows):
    """collate_fn for mosaic / litdata: the four Megatron tensors from a list
    of uint16 4097-token rows (numpy arrays or torch tensors), once per batch."""
    import numpy as np
    import torch

    if isinstance(rows[0], torch.Tensor):
        x = torch.stack(rows).to(torch.int64)
    else:
        x = torch.from_numpy(np.stack(rows).astype(np.int64))
    b = x.shape[0]
    return {
        "tokens": x[:, :-1].contiguous(),
        "labels": x[:, 1:].contiguous(),
        "loss_mask": torch.ones((b, SEQ_LEN), dtype=torch.float32),
        "position_ids": torch.arange(SEQ_LEN, dtype=torch.int64).expand(b, SEQ_LEN).clone(),
    }


def mosaic_collate(samples):
    return megatron_collate([s["tokens"] for s in samples])


class TreeCpu:
    """CPU seconds (user + system) of this process, its live descendants, the
    children it has waited for, and any extra pids (seqfeed serve)."""

    def __init__(self, extra_pids=()):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.extra = [psutil.Process(p) for p in extra_pids]

    def __call__(self):
        t = self.me.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        procs = []
        try:
            procs = self.me.children(recursive=True)
        except self.psutil.Error:
            pass
        for p in procs + self.extra:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except self.psutil.Error:
                pass
        return total


def build_seqfeed(a):
    import seqfeed

    kw = dict(
        dataset=a["dataset"], device="cpu", dp_rank=0, dp_size=1, micro_batch=MICRO, dtype="int64",
        prefetch=a["prefetch"], labels=True, eod_token=a["eos"],
    )
    if a["kind"] == "seqfeed-tcp":
        kw.update(transport="tcp", nodes=[a["addr"]], connections=a["connections"])
    else:
        kw.update(transport="local")
    loader = seqfeed.Loader(a["plan"], **kw)

    def batches():
        for b in loader:
            yield b.as_dict(format="megatron")

    return batches(), loader.close, {}


def build_megatron(a):
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    cache = tempfile.mkdtemp(prefix="mcore-cache-")
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        config = GPTDatasetConfig(
            random_seed=a["seed"], sequence_length=SEQ_LEN, blend=([a["prefix"]], None), split="100,0,0",
            path_to_cache=cache, tokenizer=StubTokenizer(65536, a["eos"]), reset_position_ids=False,
            reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False, mmap_bin_files=True,
        )
        ds, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [a["max_samples"], 0, 0], lambda: True, config).build()
    dl = torch.utils.data.DataLoader(ds, batch_size=MICRO, num_workers=2, pin_memory=True, shuffle=False,
                                     drop_last=True)
    it = iter(dl)

    def close():
        nonlocal it
        del it
        shutil.rmtree(cache, ignore_errors=True)

    return it, close, {"dataset_samples": len(ds)}


def build_mosaic(a):
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=a["mds"], remote=None, shuffle=False, batch_size=MICRO)
    dl = StreamingDataLoader(ds, batch_size=MICRO, num_workers=2, pin_memory=True, drop_last=True,
                             collate_fn=mosaic_collate)
    it = iter(dl)

    def close():
        nonlocal it
        del it

    return it, close, {"dataset_samples": len(ds)}


def build_litdata(a):
    import litdata

    ds = litdata.StreamingDataset(input_dir=a["lit"], item_loader=litdata.TokensLoader(block_size=PACK_LEN),
                                  shuffle=False, drop_last=True)
    dl = litdata.StreamingDataLoader(ds, batch_size=MICRO, num_workers=2, pin_memory=True, drop_last=True,
                                     collate_fn=megatron_collate)
    it = iter(dl)

    def close():
        nonlocal it
        del it

    return it, close, {"dataset_samples": len(ds)}


def worker_measure(a):
    """Build one loader, time the first batch, then steady state with CPU."""
    kind = a["kind"]
    import psutil  # noqa: F401
    import torch

    if kind.startswith("seqfeed"):
        import seqfeed  # noqa: F401
    elif kind == "megatron":
        import megatron.core.datasets.gpt_dataset  # noqa: F401
    elif kind == "mosaic":
        import streaming  # noqa: F401
    elif kind == "litdata":
        import litdata  # noqa: F401
    build = {"seqfeed-local": build_seqfeed, "seqfeed-tcp": build_seqfeed, "megatron": build_megatron,
             "mosaic": build_mosaic, "litdata": build_litdata}[kind]
    cpu = TreeCpu([a["serve_pid"]] if kind == "seqfeed-tcp" else [])
    c0 = cpu()
    t0 = time.perf_counter()
    it, close, info = build(a)
    t_built = time.perf_counter()
    touch = 0
    first = None
    n = 0
    t_first = t_w = c_w = None
    end_reason = "target_s"
    for d in it:
        touch += (int(d["tokens"][-1, -1]) + int(d["labels"][-1, -1]) + int(d["loss_mask"][-1, -1])
                  + int(d["position_ids"][-1, -1]))
        n += 1
        if first is None:
            t_first = time.perf_counter()
            first = d
        if n == a["warmup"] + 1:
            c_w = cpu()
            t_w = time.perf_counter()
        elif t_w is not None and time.perf_counter() - t_w >= a["target_s"]:
            break
    else:
        end_reason = "end of data"
    t_end = time.perf_counter()
    c_end = cpu()
    if t_w is None or n <= a["warmup"] + 1:
        die("%s: only %d batches (warm-up %d)" % (kind, n, a["warmup"]))
    steady_samples = (n - a["warmup"] - 1) * MICRO
    fb = {}
    for k in KEYS:
        v = first.get(k)
        fb[k] = None if v is None else [list(v.shape), str(v.dtype)]
    checks = {}
    if all(fb[k] == [EXPECT[k][0], EXPECT[k][1]] for k in KEYS):
        tok, lab = first["tokens"], first["labels"]
        checks["labels_shifted"] = bool(torch.equal(tok[:, 1:], lab[:, :-1]))
        checks["loss_mask_ones"] = bool((first["loss_mask"] == 1).all())
        checks["position_ids_arange"] = bool(
            torch.equal(first["position_ids"], torch.arange(SEQ_LEN).expand(MICRO, SEQ_LEN)))
        rows = torch.cat([tok, lab[:, -1:]], dim=1).to(torch.uint16).numpy()
        checks["row_hashes"] = [row_hash(r.tobytes()) for r in rows]
    try:
        pinned = bool(first["tokens"].is_pinned())
    except RuntimeError:  # no CUDA runtime here
        pinned = False
    close()
    out = {
        "kind": kind,
        "samples_per_s": steady_samples / (t_end - t_w),
        "cpu_s_per_1k": (c_end - c_w) / steady_samples * 1000,
        "first_batch_s": t_first - t0,
        "build_s": t_built - t0,
        "batches": n,
        "steady_samples": steady_samples,
        "steady_s": t_end - t_w,
        "end": end_reason,
        "cpu_total_s": c_end - c0,
        "wall_total_s": t_end - t0,
        "first_batch": fb,
        "checks": checks,
        "pinned": pinned,
        "torch_threads": torch.get_num_threads(),
        "touch": touch,
    }
    out.update(info)
    print(json.dumps(out))


# --------------------------------------------------------------------------- helpers


def run_json(cmd, what, timeout=900):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if r.returncode != 0:
        die("%s failed (exit %d): %s\n%s" % (what, r.returncode, " ".join(cmd), r.stderr[-3000:]))
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if not lines:
        die("%s printed no JSON: %s\n%s" % (what, r.stdout[-2000:], r.stderr[-2000:]))
    return json.loads(lines[-1])


def measure(a_dict):
    return run_json([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(a_dict)],
                    "worker " + a_dict["kind"])


def start_serve(exe, dataset, work):
    addr_file = os.path.join(work, "serve.addr")
    if os.path.exists(addr_file):
        os.remove(addr_file)
    logf = open(os.path.join(work, "serve.log"), "w")
    p = subprocess.Popen([exe, "serve", "--dataset", dataset, "--listen", "127.0.0.1:0", "--addr-file", addr_file],
                         stdout=logf, stderr=logf)
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            die("seqfeed serve exited (%d); log: %s" % (p.returncode, open(logf.name).read()[-2000:]))
        if os.path.exists(addr_file):
            with open(addr_file) as f:
                addr = f.read().strip()
            if addr:
                return p, addr
        time.sleep(0.05)
    p.kill()
    die("seqfeed serve wrote no --addr-file in 60 s")


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def write_plan(path, global_batch, seed):
    with open(path, "w") as f:
        f.write("seed = %d\nglobal_batch = %d\nmax_epochs = 1000000.0\n\n[run]\nsteps = 10000000\n\n"
                '[[sources]]\nname = "%s"\nweight = 1.0\n' % (seed, global_batch, SOURCE))


# --------------------------------------------------------------------------- data


def prepare(a, exe, work):
    """MMIDIDX corpus, seqfeed pack, MDS and litdata copies; reused when present."""
    stamp_path = os.path.join(work, "data.json")
    want = {"tokens": a.tokens, "eos": a.eos, "seed": a.seed, "pack_len": PACK_LEN, "version": 1}
    if not a.fresh and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f).get("want") == want:
                log("reusing the data in %s (--fresh to rewrite it)" % work)
                with open(stamp_path) as f:
                    return json.load(f)
    for d in ("mmidx", "data", "mds", "lit"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    info = {"want": want, "write_s": {}}
    corpus_dir = os.path.join(work, "mmidx")
    prefix = os.path.join(corpus_dir, CORPUS_NAME)
    t = time.perf_counter()
    log("making a %d-token MMIDIDX corpus" % a.tokens)
    run_json([sys.executable, os.path.join(HERE, "megatron_gptdataset.py"), "--make-corpus", corpus_dir,
              "--tokens", str(a.tokens), "--vocab", "50000", "--eos", str(a.eos), "--seed", str(a.seed)],
             "make-corpus")
    info["write_s"]["mmidx"] = time.perf_counter() - t
    dataset = os.path.join(work, "data")
    t = time.perf_counter()
    log("seqfeed pack --seq-len %d" % PACK_LEN)
    r = subprocess.run([exe, "pack", "--out", os.path.join(dataset, SOURCE), "--seq-len", str(PACK_LEN),
                        "--dtype", "u16", prefix + ".idx"], capture_output=True, text=True)
    if r.returncode != 0:
        die("seqfeed pack failed:\n" + r.stdout + r.stderr)
    info["write_s"]["seqfeed_pack"] = time.perf_counter() - t
    files = packed_files(dataset)
    n = sum(c for _, _, c in files)
    info["sequences"] = n
    # MDS, from the packed rows, in order.
    t = time.perf_counter()
    log("writing MDS (MDSWriter) from the %d packed rows" % n)
    run_json([sys.executable, os.path.abspath(__file__), "--write", "mds", json.dumps(
        {"dataset": dataset, "out": os.path.join(work, "mds")})], "MDSWriter")
    info["write_s"]["mds"] = time.perf_counter() - t
    t = time.perf_counter()
    log("writing litdata chunks (litdata.optimize, TokensLoader) from the packed rows")
    run_json([sys.executable, os.path.abspath(__file__), "--write", "litdata", json.dumps(
        {"dataset": dataset, "out": os.path.join(work, "lit")})], "litdata.optimize")
    info["write_s"]["litdata"] = time.perf_counter() - t
    info["bytes"] = {d: sum(os.path.getsize(os.path.join(r_, f)) for r_, _, fs in os.walk(os.path.join(work, d))
                            for f in fs) for d in ("mmidx", "data", "mds", "lit")}
    with open(stamp_path, "w") as f:
        json.dump(info, f)
    return info


def write_mds(w):
    from streaming import MDSWriter

    rows = packed_rows(packed_files(w["dataset"]))
    with MDSWriter(out=w["out"], columns={"tokens": "ndarray:uint16:%d" % PACK_LEN}, compression=None,
                   size_limit=1 << 27, progress_bar=False) as wr:
        for r in rows:
            wr.write({"tokens": r})
    print(json.dumps({"rows": len(rows)}))


def write_litdata(w):
    import litdata

    files = packed_files(w["dataset"])
    per = 256  # rows per input item
    items = [(p, off, c, lo, min(lo + per, c)) for p, off, c in files for lo in range(0, c, per)]
    litdata.optimize(fn=litdata_chunk_fn, inputs=items, output_dir=w["out"], chunk_size=PACK_LEN * 1024,
                     item_loader=litdata.TokensLoader(), num_workers=1, verbose=False, keep_data_ordered=True,
                     mode="overwrite")
    print(json.dumps({"items": len(items)}))


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--write", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the corpus (8M tokens, ~1950 samples) and --target-s (default 1)")
    ap.add_argument("--work", help="data dir (default $TMPDIR/seqfeed-loader-peers-s<scale>), reused if present")
    ap.add_argument("--fresh", action="store_true", help="rewrite the data in --work")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds, best kept (default 2)")
    ap.add_argument("--target-s", type=float, default=None, help="steady seconds per measurement (default 0.8 x scale)")
    ap.add_argument("--warmup", type=int, default=3, help="batches before the steady clock starts")
    ap.add_argument("--loaders", default=",".join(LOADERS), help="subset, comma-separated")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--eos", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seqfeed-bin")
    ap.add_argument("--skip-overhead", action="store_true", help="skip part 2 (Python vs Rust loader)")
    a = ap.parse_args()
    if a.worker:
        return worker_measure(json.loads(a.worker))
    if a.write:
        return {"mds": write_mds, "litdata": write_litdata}[a.write](json.loads(a.args))
    if a.scale <= 0:
        die("--scale must be positive")
    a.tokens = int(8_000_000 * a.scale)
    target_s = a.target_s if a.target_s is not None else 0.8 * a.scale
    loaders = [x for x in a.loaders.split(",") if x]
    for x in loaders:
        if x not in LOADERS:
            die("unknown loader %r (known: %s)" % (x, ", ".join(LOADERS)))
    if "seqfeed-local" not in loaders:
        die("seqfeed-local is the reference of every ratio: keep it in --loaders")
    exe = find_seqfeed_bin(a.seqfeed_bin)
    if exe is None:
        die("no seqfeed binary (cargo build --release -p seqfeed, or --seqfeed-bin)")
    mods = {"seqfeed-local": "seqfeed", "seqfeed-tcp": "seqfeed", "megatron": "megatron.core",
            "mosaic": "streaming", "litdata": "litdata"}
    for mod in sorted({"torch", "psutil", "numpy"} | {mods[x] for x in loaders}):
        r = subprocess.run([sys.executable, "-c", "import " + mod], capture_output=True, text=True)
        if r.returncode != 0:
            die("cannot import %s with %s (scripts/python-env.sh):\n%s" % (mod, sys.executable, r.stderr[-1500:]))
    work = os.path.abspath(a.work or os.path.join(tempfile.gettempdir(), "seqfeed-loader-peers-s%g" % a.scale))
    os.makedirs(work, exist_ok=True)
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    data = prepare(a, exe, work)
    dataset = os.path.join(work, "data")
    prefix = os.path.join(work, "mmidx", CORPUS_NAME)
    plan = os.path.join(work, "plan-mb8.toml")
    write_plan(plan, MICRO, a.seed)
    files = packed_files(dataset)
    rows = packed_rows(files)
    n_rows = len(rows)
    corpus_hashes = None  # computed on demand (hashing every row costs ~1 s per 10k rows)

    serve = None
    addr = None
    if "seqfeed-tcp" in loaders:
        serve, addr = start_serve(exe, dataset, work)
    results = {x: [] for x in loaders}
    t_bench = time.perf_counter()
    try:
        for rnd in range(a.rounds):
            order = list(loaders) if rnd % 2 == 0 else list(reversed(loaders))
            for kind in order:
                r = measure(dict(kind=kind, plan=plan, dataset=dataset, addr=addr,
                                 serve_pid=serve.pid if serve else None, prefetch=a.prefetch,
                                 connections=a.connections, eos=a.eos, seed=a.seed, prefix=prefix,
                                 max_samples=n_rows,
                                 mds=os.path.join(work, "mds"), lit=os.path.join(work, "lit"),
                                 warmup=a.warmup, target_s=target_s))
                results[kind].append(r)
                log("round %d %-13s %8.0f samples/s  %6.2f CPU s/1k  first batch %6.3f s  (%d samples, %.2f s, %s)"
                    % (rnd + 1, kind, r["samples_per_s"], r["cpu_s_per_1k"], r["first_batch_s"],
                       r["steady_samples"], r["steady_s"], r["end"]))
    finally:
        if serve is not None:
            stop(serve)
    bench_s = time.perf_counter() - t_bench

    # ---- first-batch checks
    problems = []
    for kind in loaders:
        r = results[kind][0]
        for k in KEYS:
            if r["first_batch"][k] != [EXPECT[k][0], EXPECT[k][1]]:
                problems.append("%s: %s is %s, expected %s %s" % (kind, k, r["first_batch"][k], *EXPECT[k]))
        c = r["checks"]
        for k in ("labels_shifted", "loss_mask_ones", "position_ids_arange"):
            if c.get(k) is not True:
                problems.append("%s: first batch check %s failed" % (kind, k))
    token_check = {}
    for kind in loaders:
        hs = results[kind][0]["checks"].get("row_hashes") or []
        if kind == "megatron":
            token_check[kind] = "shape/dtype only (own samples over the MMIDIDX corpus)"
        elif kind in ("mosaic", "litdata"):
            want = [row_hash(rows[i].tobytes()) for i in range(MICRO)]
            ok = hs == want
            token_check[kind] = "rows 0..7 of the packed corpus: %s" % ("same" if ok else "DIFFERENT")
            if not ok:
                problems.append("%s: first batch is not packed rows 0..7" % kind)
        else:
            if corpus_hashes is None:
                corpus_hashes = {row_hash(rows[i].tobytes()) for i in range(n_rows)}
            ok = bool(hs) and all(h in corpus_hashes for h in hs)
            token_check[kind] = "each row a packed row: %s" % ("yes" if ok else "NO")
            if not ok:
                problems.append("%s: a first-batch row is not a packed row" % kind)
    if "seqfeed-tcp" in loaders:
        same = results["seqfeed-tcp"][0]["checks"].get("row_hashes") == results["seqfeed-local"][0]["checks"].get(
            "row_hashes")
        token_check["seqfeed-tcp"] += "; same rows as seqfeed-local: %s" % ("yes" if same else "NO")
        if not same:
            problems.append("seqfeed-tcp's first batch differs from seqfeed-local's")

    # ---- part 2: python overhead at 64 KiB local steps
    overhead = None
    if not a.skip_overhead:
        overhead = python_overhead(a, exe, work, dataset, target_s)

    # ---- table
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in results.items()}
    cpu_best = {k: min(r["cpu_s_per_1k"] for r in v) for k, v in results.items()}
    fb_best = {k: min(r["first_batch_s"] for r in v) for k, v in results.items()}
    ref = best["seqfeed-local"]["samples_per_s"]
    print("seqfeed Python loader vs peer loaders: micro_batch %d x seq_len %d, Megatron's four tensors "
          "(tokens/labels int64, loss_mask f32, position_ids int64), %d packed rows (%d tokens), local disk"
          % (MICRO, SEQ_LEN, n_rows, a.tokens))
    print("host: %d CPUs, load average %.2f %.2f %.2f at start (%s); best of %d interleaved rounds, "
          "%.1f s steady per measurement (or one pass), scale %g"
          % (os.cpu_count(), *load0, "busy host: numbers are noisy" if load0[0] > 1 else "quiet",
             a.rounds, target_s, a.scale))
    print()
    hdr = "%-15s %12s %10s %12s %15s   %s" % ("loader", "samples/s", "ratio", "CPU s/1k", "first batch s",
                                               "rounds (samples/s)")
    print(hdr)
    print("-" * len(hdr))
    for kind in loaders:
        b = best[kind]
        print("%-15s %12.0f %9.2fx %12.3f %15.3f   %s%s" % (
            kind, b["samples_per_s"], b["samples_per_s"] / ref, cpu_best[kind], fb_best[kind],
            ", ".join("%.0f" % r["samples_per_s"] for r in results[kind]),
            "  (one pass: %d samples)" % b["steady_samples"] if b["end"] != "target_s" else ""))
    print()
    print("ratio: samples/s over seqfeed-local's; CPU s/1k: CPU seconds per 1,000 samples, whole process tree"
          " (workers included; seqfeed-tcp includes seqfeed serve), best round; first batch: lowest of the rounds,"
          " imports excluded")
    for kind in loaders:
        print("first batch %-13s %s; %s" % (kind + ":", "ok" if not any(p.startswith(kind + ":") for p in problems)
                                             else "PROBLEM", token_check[kind]))
    targets = {}
    peers = [p for p in PEERS if p in loaders]
    if peers:
        top = max(peers, key=lambda p: best[p]["samples_per_s"])
        for side in [x for x in ("seqfeed-local", "seqfeed-tcp") if x in loaders]:
            ratio = best[side]["samples_per_s"] / best[top]["samples_per_s"]
            targets["%s_over_best_peer" % side] = round(ratio, 3)
            print("target: %s >= 10x the best peer (%s) in samples/s: %.1fx -> %s"
                  % (side, top, ratio, "MET" if ratio >= 10 else "MISSED"))
        least = min(loaders, key=lambda k: cpu_best[k])
        for side in [x for x in ("seqfeed-local", "seqfeed-tcp") if x in loaders]:
            others = [p for p in peers]
            ok = all(cpu_best[side] < cpu_best[p] for p in others)
            lowest_peer = min(others, key=lambda p: cpu_best[p])
            print("target: %s least CPU per sample: %.3f vs the lowest peer's %.3f (%s): %.1fx less -> %s"
                  % (side, cpu_best[side], cpu_best[lowest_peer], lowest_peer,
                     cpu_best[lowest_peer] / cpu_best[side] if cpu_best[side] > 0 else float("inf"),
                     "MET" if ok else "MISSED"))
            targets["%s_least_cpu" % side] = ok
        targets["least_cpu_loader"] = least
    if overhead:
        o = overhead
        print("Python overhead vs the Rust loader at 64 KiB local steps (global_batch 8, dtype=native, %d steps):"
              " python/rust tokens/s %.2fx (target >= 0.95x) -> %s; rust %.0f steps/s, python %.0f steps/s,"
              " python - rust = %+.1f us/batch"
              % (o["steps"], o["ratio"], "MET" if o["ratio"] >= 0.95 else "MISSED", o["rust_steps_per_s"],
                 o["python_steps_per_s"], o["python_minus_rust_us"]))
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
    total = time.perf_counter() - t_all
    print("load average %.2f %.2f %.2f at the end; total %.0f s (measuring %.0f s)" % (
        *os.getloadavg(), total, bench_s))
    print(json.dumps({
        "bench": "loader_peers", "scale": a.scale, "rounds": a.rounds, "target_s": target_s, "warmup": a.warmup,
        "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(), "data": data,
        "sequences": n_rows, "best": {k: {kk: vv for kk, vv in v.items() if kk != "checks"} for k, v in best.items()},
        "cpu_s_per_1k_best": cpu_best, "first_batch_s_best": fb_best,
        "rounds_samples_per_s": {k: [r["samples_per_s"] for r in v] for k, v in results.items()},
        "rounds_cpu_s_per_1k": {k: [r["cpu_s_per_1k"] for r in v] for k, v in results.items()},
        "token_check": token_check, "targets": targets, "python_overhead": overhead, "problems": problems,
        "total_s": round(total, 1),
    }))
    if problems:
        sys.exit(1)


def python_overhead(a, exe, work, dataset, target_s):
    """python_loader.py's part 1 for local, global_batch 8 only (its functions)."""
    import python_loader as pl

    plan = os.path.join(work, "plan-gb8.toml")
    pl.write_plan(plan, 8, 10_000_000, a.seed)
    cal = pl.rust_read(exe, dataset, plan, "local", None, 2000, a.prefetch, a.connections)
    rate = cal["steps"] / cal["elapsed_s"]
    steps = int(min(max(rate * max(target_s, 0.5), 2000), 9_000_000))
    log("overhead: rust ~%.0f steps/s -> %d steps per side" % (rate, steps))
    rust, py = [], []
    for rnd in range(a.rounds):
        for side in (("rust", "python") if rnd % 2 == 0 else ("python", "rust")):
            if side == "rust":
                r = pl.rust_read(exe, dataset, plan, "local", None, steps, a.prefetch, a.connections)
                rust.append(r)
            else:
                r = pl.worker("pyread", dict(plan=plan, dataset=dataset, transport="local", node=None, steps=steps,
                                             prefetch=a.prefetch, connections=a.connections, seq_len=PACK_LEN))
                if r["batches"] != steps:
                    die("python read %d batches, expected %d" % (r["batches"], steps))
                py.append(r)
            log("overhead round %d %s: %.0f steps/s" % (rnd + 1, side, steps / r["elapsed_s"]))
    rb = max(rust, key=lambda r: r["tokens_per_s"])
    pb = max(py, key=lambda r: r["tokens_per_s"])
    return {
        "steps": steps,
        "ratio": round(pb["tokens_per_s"] / rb["tokens_per_s"], 4),
        "rust_steps_per_s": steps / rb["elapsed_s"],
        "python_steps_per_s": steps / pb["elapsed_s"],
        "python_minus_rust_us": (pb["elapsed_s"] - rb["elapsed_s"]) / steps * 1e6,
        "rust_rounds_steps_per_s": [steps / r["elapsed_s"] for r in rust],
        "python_rounds_steps_per_s": [steps / r["elapsed_s"] for r in py],
    }


if __name__ == "__main__":
    main()
