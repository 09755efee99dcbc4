#!/usr/bin/env python3
"""Megatron-core GPTDataset + torch DataLoader, the reference loader for seqfeed.

Three modes, all run with the venv of scripts/python-env.sh (torch, megatron-core):

1. Make a corpus in Megatron's own MMIDIDX format (written by megatron-core's
   IndexedDatasetBuilder, dtype uint16): documents of seeded random lengths
   (--min-doc..--max-doc tokens, the last one the EOS id), random token ids in
   [0, vocab) other than EOS, --tokens tokens in all.

     megatron_gptdataset.py --make-corpus DIR --tokens 20000000 --vocab 50000
       -> DIR/corpus_text_document.bin, DIR/corpus_text_document.idx

2. Megatron (default): build GPTDataset over --prefix the way a modern trainer
   does (BlendedMegatronDatasetBuilder with a GPTDatasetConfig: flash-attention
   style create_attention_mask=False, no position/mask resets, no EOD loss
   masking, split "100,0,0", fixed seed, index cache in a temporary directory),
   read --batches micro-batches through
   torch.utils.data.DataLoader(ds, batch_size=micro_batch, num_workers=2,
   pin_memory=True, shuffle=False), and print one JSON object on stdout.

     megatron_gptdataset.py --prefix DIR/corpus_text_document --seq-len 4096 \
       --micro-batch 8 --batches 200

3. seqfeed (--seqfeed): the same run through the seqfeed Python package
   (crates/python): pack the corpus with `seqfeed pack` (or use --dataset),
   write a plan (one source, global_batch = micro_batch, steps = batches) and
   read every batch with seqfeed.Loader(transport="local", device="cpu").
   Exits 2 with a message if the `seqfeed` module or binary is missing.

     megatron_gptdataset.py --seqfeed --prefix DIR/corpus_text_document \
       --seq-len 4096 --micro-batch 8 --batches 200

JSON fields common to both loaders:
  samples_per_s          micro-batch samples per second after --warmup batches
  tokens_per_s           samples_per_s * sample_tokens
  time_to_first_batch_s  from before the dataset/loader is built to the first batch in hand
  dataset_build_s        Megatron: BlendedMegatronDatasetBuilder.build() (document, sample
                         and shuffle indices); seqfeed: seqfeed.Loader(...) construction
  batches                batches read
  sample_tokens          tokens per sample in batch tokens ([micro_batch, sample_tokens])
  batch_bytes            bytes per batch over every tensor the loader hands out
Megatron's samples are read as seq_len + 1 tokens (add_extra_token_to_sequence) and
handed out as tokens = text[:-1], labels = text[1:], both int64, plus loss_mask
(float32) and position_ids (int64).
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CORPUS_NAME = "corpus_text_document"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def fail(code, msg):
    sys.stderr.write("megatron_gptdataset: " + msg.rstrip() + "\n")
    sys.exit(code)


def need_megatron():
    try:
        import megatron.core  # noqa: F401
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        fail(
            3,
            "%s (python %s). Create the venv with scripts/python-env.sh and run this "
            "script with its python (.venv/bin/python)." % (e, sys.executable),
        )


class StubTokenizer:
    """What GPTDataset needs of a tokenizer, without a model hub.

    GPTDatasetConfig reads vocab_size (to pick the token dtype code), GPTDataset reads
    eod (loss/attention masks) and pad (masked out of the loss; -1 never occurs in
    the data, which is what megatron-core falls back to when pad collides with eod),
    and the cache key hashes unique_identifiers.
    """

    def __init__(self, vocab_size, eod):
        self.vocab_size = vocab_size
        self.eod = eod
        self.eos = eod
        self.pad = -1
        self.unique_identifiers = {
            "class": "StubTokenizer",
            "vocab_size": vocab_size,
            "eod": eod,
        }


# --------------------------------------------------------------------------- corpus


def make_corpus(a):
    need_megatron()
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    if not 2 <= a.vocab <= 65536:
        fail(1, "--vocab must be in 2..65536 for a uint16 corpus")
    if not 0 <= a.eos < a.vocab:
        fail(1, "--eos must be below --vocab")
    if not 2 <= a.min_doc <= a.max_doc:
        fail(1, "need 2 <= --min-doc <= --max-doc")
    os.makedirs(a.make_corpus, exist_ok=True)
    prefix = os.path.join(a.make_corpus, CORPUS_NAME)
    t0 = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    # Document lengths (EOS included), the last one cut so that the total is exact.
    lens = []
    total = 0
    while total < a.tokens:
        n = int(rng.integers(a.min_doc, a.max_doc + 1))
        n = min(n, a.tokens - total)
        if n < 2 and lens:  # a 1-token tail joins the previous document
            lens[-1] += n
        else:
            lens.append(n)
        total += n
    # Token ids in [0, vocab) minus the EOS id.
    toks = rng.integers(0, a.vocab - 1, size=a.tokens, dtype=np.int64)
    toks[toks >= a.eos] += 1
    toks = toks.astype(np.uint16)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    off = 0
    for n in lens:
        doc = toks[off : off + n]
        doc[-1] = a.eos
        builder.add_document(doc, [n])
        off += n
    builder.finalize(prefix + ".idx")
    out = {
        "prefix": prefix,
        "tokens": int(a.tokens),
        "documents": len(lens),
        "vocab": a.vocab,
        "eos": a.eos,
        "dtype": "uint16",
        "doc_len_range": [a.min_doc, a.max_doc],
        "seed": a.seed,
        "bin_bytes": os.path.getsize(prefix + ".bin"),
        "idx_bytes": os.path.getsize(prefix + ".idx"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    print(json.dumps(out))


# --------------------------------------------------------------------------- timing


class Clock:
    """Per-batch arrival times; steady state excludes the first `warmup` batches."""

    def __init__(self, warmup):
        self.warmup = warmup
        self.t = []

    def tick(self):
        self.t.append(time.perf_counter())

    def report(self, t_start, micro_batch, sample_tokens):
        n = len(self.t)
        if n == 0:
            fail(1, "the loader yielded no batch")
        w = min(self.warmup, n - 1)
        steady_s = self.t[-1] - self.t[w] if n > 1 else 0.0
        sps = (n - 1 - w) * micro_batch / steady_s if steady_s > 0 else float("nan")
        return {
            "samples_per_s": round(sps, 2),
            "tokens_per_s": round(sps * sample_tokens, 1),
            "time_to_first_batch_s": round(self.t[0] - t_start, 4),
            "batches": n,
            "warmup_batches": w,
            "steady_s": round(steady_s, 4),
            "total_s": round(self.t[-1] - t_start, 4),
        }


def to_device(batch, device):
    import torch

    if device == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def sync(device):
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- Megatron


def run_megatron(a):
    need_megatron()
    import logging

    import numpy as np
    import torch
    import megatron.core
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    logging.basicConfig(stream=sys.stderr, level=logging.INFO if a.verbose else logging.WARNING)
    for suffix in (".bin", ".idx"):
        if not os.path.exists(a.prefix + suffix):
            fail(1, "no %s%s (give the prefix without .bin/.idx)" % (a.prefix, suffix))
    vocab = a.vocab
    if vocab is None:
        # The tokenizer's vocab size only selects the token dtype code (uint16 below 65537).
        idx = IndexedDataset(a.prefix, mmap=True)
        vocab = 65536 if idx.index.dtype == np.uint16 else 1 << 31
        del idx
    cache = tempfile.mkdtemp(prefix="mcore-cache-")
    try:
        tok = StubTokenizer(vocab, a.eos)
        num_samples = a.batches * a.micro_batch
        # Everything megatron-core prints goes to stderr; stdout carries the JSON only.
        with contextlib.redirect_stdout(sys.stderr):
            t_start = time.perf_counter()
            config = GPTDatasetConfig(
                random_seed=a.seed,
                sequence_length=a.seq_len,
                blend=([a.prefix], None),
                split="100,0,0",
                path_to_cache=cache,
                tokenizer=tok,
                reset_position_ids=False,
                reset_attention_mask=False,
                eod_mask_loss=False,
                create_attention_mask=False,
                mmap_bin_files=True,
            )
            train_ds, _, _ = BlendedMegatronDatasetBuilder(
                GPTDataset, [num_samples, 0, 0], lambda: True, config
            ).build()
            t_built = time.perf_counter()
            loader = torch.utils.data.DataLoader(
                train_ds,
                batch_size=a.micro_batch,
                num_workers=a.num_workers,
                pin_memory=True,
                shuffle=False,
                drop_last=True,
            )
            clock = Clock(a.warmup)
            first = None
            for i, batch in enumerate(loader):
                batch = to_device(batch, a.device)
                clock.tick()
                if first is None:
                    first = batch
                if i + 1 >= a.batches:
                    break
            sync(a.device)
            if clock.t:
                clock.t[-1] = time.perf_counter()
            del loader
        tokens = first["tokens"]
        out = {"loader": "megatron-core GPTDataset + torch DataLoader"}
        out.update(clock.report(t_start, a.micro_batch, tokens.shape[1]))
        out.update(
            {
                "dataset_build_s": round(t_built - t_start, 4),
                "micro_batch": a.micro_batch,
                "seq_len": a.seq_len,
                "sample_tokens": int(tokens.shape[1]),
                "tokens_read_per_sample": a.seq_len + 1,
                "tokens_dtype": str(tokens.dtype),
                "batch_keys": {k: [list(v.shape), str(v.dtype)] for k, v in first.items()},
                "batch_bytes": int(sum(v.numel() * v.element_size() for v in first.values())),
                "dataset_samples": len(train_ds),
                "num_workers": a.num_workers,
                "pin_memory_requested": True,
                "pin_memory_effective": bool(first["tokens"].is_pinned())
                if a.device == "cpu"
                else None,
                "device": a.device,
                "megatron_core": getattr(megatron.core, "__version__", "?"),
                "torch": torch.__version__,
            }
        )
        print(json.dumps(out))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# --------------------------------------------------------------------------- seqfeed


def find_seqfeed_bin(given):
    if given:
        return given if os.access(given, os.X_OK) else None
    for cand in (
        shutil.which("seqfeed"),
        os.path.join(REPO_ROOT, "target", "release", "seqfeed"),
        os.path.join(REPO_ROOT, "target", "debug", "seqfeed"),
    ):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def run_seqfeed(a):
    try:
        import seqfeed
    except ImportError as e:
        fail(
            2,
            "the seqfeed Python package is not importable (%s). Build and install it into "
            "this venv from crates/python (maturin develop --release -m "
            "crates/python/Cargo.toml), then rerun with --seqfeed." % e,
        )
    import torch

    work = tempfile.mkdtemp(prefix="seqfeed-bench-")
    try:
        pack_s = None
        if a.dataset:
            dataset, source = a.dataset, a.source
        else:
            exe = find_seqfeed_bin(a.seqfeed_bin)
            if exe is None:
                fail(
                    2,
                    "no seqfeed binary to pack %s with (cargo build --release --bin seqfeed, "
                    "or pass --seqfeed-bin, or --dataset/--source of a packed dataset)" % a.prefix,
                )
            for suffix in (".bin", ".idx"):
                if not os.path.exists(a.prefix + suffix):
                    fail(1, "no %s%s (give the prefix without .bin/.idx)" % (a.prefix, suffix))
            dataset, source = os.path.join(work, "data"), a.source
            # The Megatron corpus already ends every document with EOS: no --eos.
            cmd = [
                exe, "pack", "--out", os.path.join(dataset, source),
                "--seq-len", str(a.seq_len), "--dtype", "u16", a.prefix + ".idx",
            ]
            t = time.perf_counter()
            r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
            pack_s = time.perf_counter() - t
            if r.returncode != 0:
                fail(1, "seqfeed pack failed (%d): %s" % (r.returncode, " ".join(cmd)))
        plan = os.path.join(work, "plan.toml")
        with open(plan, "w") as f:
            f.write(
                "seed = %d\nglobal_batch = %d\nmax_epochs = %s\n\n[run]\nsteps = %d\n\n"
                '[[sources]]\nname = "%s"\nweight = 1.0\n'
                % (a.seed, a.micro_batch, "1000.0", a.batches, source)
            )
        t_start = time.perf_counter()
        loader = seqfeed.Loader(
            plan,
            dataset=dataset,
            transport="local",
            device="cpu",
            dp_rank=0,
            dp_size=1,
            micro_batch=None,
            dtype=a.dtype,
            prefetch=a.prefetch,
            labels=False,
        )
        t_built = time.perf_counter()
        clock = Clock(a.warmup)
        first = None
        for i, batch in enumerate(loader):
            tokens = to_device(batch.tokens, a.device)
            clock.tick()
            if first is None:
                first = tokens
            if i + 1 >= a.batches:
                break
        sync(a.device)
        if clock.t:
            clock.t[-1] = time.perf_counter()
        out = {"loader": "seqfeed.Loader(transport=local, device=cpu)"}
        out.update(clock.report(t_start, a.micro_batch, first.shape[1]))
        out.update(
            {
                "dataset_build_s": round(t_built - t_start, 4),
                "pack_s": round(pack_s, 3) if pack_s is not None else None,
                "micro_batch": a.micro_batch,
                "seq_len": a.seq_len,
                "sample_tokens": int(first.shape[1]),
                "tokens_read_per_sample": int(first.shape[1]),
                "tokens_dtype": str(first.dtype),
                "batch_bytes": int(first.numel() * first.element_size()),
                "prefetch": a.prefetch,
                "device": a.device,
                "seqfeed": getattr(seqfeed, "__version__", "?"),
                "torch": torch.__version__,
            }
        )
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_argument_group("corpus")
    g.add_argument("--make-corpus", metavar="DIR", help="write DIR/%s.bin/.idx and exit" % CORPUS_NAME)
    g.add_argument("--tokens", type=int, default=20_000_000)
    g.add_argument("--vocab", type=int, default=None, help="vocab size (corpus default 50000)")
    g.add_argument("--min-doc", type=int, default=50, help="shortest document, EOS included")
    g.add_argument("--max-doc", type=int, default=2000, help="longest document, EOS included")
    g.add_argument("--eos", type=int, default=0, help="EOS/EOD token id")
    g = ap.add_argument_group("benchmark")
    g.add_argument("--prefix", help="MMIDIDX prefix (path/corpus_text_document)")
    g.add_argument("--seq-len", type=int, default=4096)
    g.add_argument("--micro-batch", type=int, default=8)
    g.add_argument("--batches", type=int, default=100)
    g.add_argument("--warmup", type=int, default=5, help="batches left out of samples_per_s")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--device", default="cpu", help="cpu, or cuda: copy each batch there")
    g.add_argument("--verbose", action="store_true", help="megatron-core's INFO log on stderr")
    g = ap.add_argument_group("seqfeed")
    g.add_argument("--seqfeed", action="store_true", help="run the seqfeed side instead")
    g.add_argument("--dataset", help="an already packed seqfeed dataset dir (else pack --prefix)")
    g.add_argument("--source", default="corpus", help="source name in the dataset")
    g.add_argument("--seqfeed-bin", help="seqfeed binary for packing (default: PATH, target/)")
    g.add_argument("--dtype", default="native", choices=["native", "int64"])
    g.add_argument("--prefetch", type=int, default=2)
    a = ap.parse_args()

    if a.make_corpus:
        if a.vocab is None:
            a.vocab = 50000
        make_corpus(a)
        return
    if a.micro_batch < 1 or a.batches < 1 or a.seq_len < 1:
        fail(1, "--seq-len, --micro-batch and --batches must be positive")
    if a.seqfeed:
        if not a.dataset and not a.prefix:
            fail(1, "--seqfeed needs --prefix (to pack) or --dataset")
        run_seqfeed(a)
        return
    if not a.prefix:
        fail(1, "--prefix is required (or --make-corpus DIR)")
    run_megatron(a)


if __name__ == "__main__":
    main()
