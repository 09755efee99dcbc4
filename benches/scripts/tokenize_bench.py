#!/usr/bin/env python3
"""Tokenizing throughput: `seqfeed pack --tiktoken cl100k_base` (release binary)
against OpenAI's Python tiktoken batch-encoding the same documents on all cores,
and against a sequential copy of the same input bytes (read + write + fsync,
as benches/benches/pack.rs does), measured in one run. Target: >= 1.0x of
Python tiktoken.

Usage: PYTHON benches/scripts/tokenize_bench.py   (PYTHON: one with tiktoken)

The corpus is real text: the paragraphs of crates/format/tests/data/pydoc_topics.txt,
drawn with a seeded RNG into documents of 1 to 8 paragraphs, as JSON Lines
(`{"text": ...}`), SEQFEED_BENCH_MB MiB of it (default 32). Python tiktoken is
built from the rank file that the tiktoken-rs crate embeds (checked against
tiktoken's own sha256; no network), as crates/format/tests/tiktoken_reference.py does.

What each side does, timed (best of SEQFEED_BENCH_ITERS, default 3):
* seqfeed: the whole `seqfeed pack` process: start, read and parse the JSON Lines,
  tokenize on all cores, pack into sequences of 2049 u32 tokens with an EOS per
  document, CRC32C and BLAKE3, write, fsync, rename.
* Python: `enc.encode_ordinary_batch(docs, num_threads=os.cpu_count())` on the
  documents already parsed into a list of str (reading and JSON parsing are
  not timed, nor is anything written): the tokenizer alone.
* copy: read the JSON Lines file and write it to another file, then fsync.

SEQFEED_BIN names the binary (default: target/release/seqfeed, built with cargo
first). Exits 2 when tiktoken is not importable.
"""
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENCODING = "cl100k_base"


def best_of(iters, f):
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def print_ratio(name, ours, ref, ref_name, target=None):
    ratio = ours / max(ref, 1e-12)
    verdict = ""
    if target is not None:
        verdict = f"(target >= {target:.2f}x: {'met' if ratio >= target else 'NOT met'})"
    print(f"{name:<48} {ratio:>8.3f}x of {ref_name} {verdict}")


def load_encoding():
    try:
        import tiktoken  # noqa: F401
    except ImportError as e:
        print(f"python tiktoken is not importable ({e}); run with a python that has it", file=sys.stderr)
        sys.exit(2)
    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public as openai_public

    spec = importlib.util.spec_from_file_location(
        "tiktoken_reference", ROOT / "crates/format/tests/tiktoken_reference.py"
    )
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    asset = ref.find_assets(None) / f"{ENCODING}.tiktoken"

    def load_local(url, expected_hash=None):
        return tiktoken.load.load_tiktoken_bpe(str(asset), expected_hash=expected_hash)

    openai_public.load_tiktoken_bpe = load_local
    return tiktoken.Encoding(**getattr(openai_public, ENCODING)()), asset, tiktoken.__version__


def make_corpus(path, mib):
    text = (ROOT / "crates/format/tests/data/pydoc_topics.txt").read_text()
    # Paragraphs are separated by lines holding only a form feed (pydoc's page breaks).
    paras = [p.strip("\n") for p in re.split(r"\n[ \t\f\r]*\n", text) if p.strip()]
    rng = random.Random(20240611)
    want = mib << 20
    n = docs = 0
    with open(path, "w") as f:
        while n < want:
            doc = "\n\n".join(rng.choice(paras) for _ in range(rng.randint(1, 8)))
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            n += len(line.encode())
            docs += 1
    return docs, len(paras)


def copy_file(src, dst):
    with open(src, "rb") as r, open(dst, "wb") as w:
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            w.write(b)
        w.flush()
        os.fsync(w.fileno())


def main():
    mib = int(os.environ.get("SEQFEED_BENCH_MB", "32"))
    iters = int(os.environ.get("SEQFEED_BENCH_ITERS", "3"))
    enc, asset, version = load_encoding()
    binary = os.environ.get("SEQFEED_BIN")
    if not binary:
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "seqfeed", "--bin", "seqfeed"],
            cwd=ROOT,
            check=True,
        )
        binary = str(ROOT / "target/release/seqfeed")
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        n_docs, n_paras = make_corpus(corpus, mib)
        size = corpus.stat().st_size
        docs = [json.loads(line)["text"] for line in open(corpus)]
        text_bytes = sum(len(d.encode()) for d in docs)
        print(
            f"tokenize benchmark: {size / 2**20:.1f} MiB JSON Lines, {n_docs} documents "
            f"({n_paras} pydoc paragraphs, seeded), {text_bytes / 2**20:.1f} MiB of text; "
            f"{ENCODING} from {asset.name}; {cpus} cores; best of {iters}"
        )

        # Warm the page cache, then the copy reference.
        copy_file(corpus, tmp / "warm")
        os.remove(tmp / "warm")

        def copy():
            copy_file(corpus, tmp / "copy")
            os.remove(tmp / "copy")

        t_copy = best_of(iters, copy)

        out = tmp / "packed"
        cmd = [binary, "pack", "--tiktoken", ENCODING, str(corpus), "--out", str(out),
               "--seq-len", "2049", "--dtype", "u32"]
        log = {}

        def pack():
            if out.exists():
                shutil.rmtree(out)
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
            if r.returncode != 0:
                sys.exit(f"seqfeed pack failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
            log["out"] = r.stdout + r.stderr

        t_pack = best_of(iters, pack)
        manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None

        tokens = {}

        def py():
            ids = enc.encode_ordinary_batch(docs, num_threads=cpus)
            tokens["n"] = sum(map(len, ids))

        t_py = best_of(iters, py)
        # The same tokens: Python's count plus one EOS per document, against
        # the packed source's token count (whole sequences plus the remainder).
        n_tok = tokens["n"] + n_docs
        if manifest is not None:
            seqs = sum(f["count"] for f in manifest["files"])
            same = "same" if seqs == n_tok // 2049 else "DIFFERENT"
            print(f"tokens: python {n_tok} with one EOS per document = {n_tok // 2049} whole "
                  f"sequences of 2049; seqfeed packed {seqs} ({same})")

        for name, t in [("copy (read+write+fsync)", t_copy), ("seqfeed pack --tiktoken", t_pack),
                        (f"python tiktoken batch ({cpus} threads)", t_py)]:
            print(f"{name:<40} {t:>8.3f} s  {n_docs / t:>10.0f} docs/s  {size / t / 1e6:>8.1f} MB/s of input"
                  f"  {n_tok / t / 1e6:>7.2f} M tokens/s")
        print_ratio("seqfeed pack vs python tiktoken (docs/s)", n_docs / t_pack, n_docs / t_py,
                    "python tiktoken", 1.0)
        print_ratio("seqfeed pack vs sequential copy (bytes/s)", size / t_pack, size / t_copy,
                    "sequential copy")
        print_ratio("python tiktoken vs sequential copy (bytes/s)", size / t_py, size / t_copy,
                    "sequential copy")
        print(f"python tiktoken {version}; seqfeed: {binary}")
        print(log.get("out", "").strip())


if __name__ == "__main__":
    main()
