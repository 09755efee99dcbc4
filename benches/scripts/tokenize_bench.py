#!/usr/bin/env python3
"""Tokenizing throughput, measured in one run:

* `seqfeed pack --tiktoken cl100k_base` (release binary) against OpenAI's Python
  tiktoken batch-encoding the same documents on all cores;
* `seqfeed pack --tokenizer tokenizer.json` against Hugging Face's Python
  `tokenizers` (`Tokenizer.encode_batch`, and `encode_batch_fast`, which skips
  offsets as seqfeed does, both on all cores through the library's own thread
  pool) with the same tokenizer.json: a byte-level BPE (GPT-2 style, vocabulary
  up to SEQFEED_BENCH_VOCAB, default 32000; the pydoc text yields about 9,200)
  trained with Python `tokenizers` on the pydoc paragraphs at the start of the
  run;
* both against a sequential copy of the same input bytes (read + write + fsync,
  as benches/benches/pack.rs does).

Target: >= 1.0x of the Python library for each tokenizer.

Usage: PYTHON benches/scripts/tokenize_bench.py   (PYTHON: one with tiktoken and tokenizers)

The corpus is real text: the paragraphs of crates/format/tests/data/pydoc_topics.txt,
drawn with a seeded RNG into documents of 1 to 8 paragraphs, as JSON Lines
(`{"text": ...}`), SEQFEED_BENCH_MB MiB of it (default 32). Python tiktoken is
built from the rank file that the tiktoken-rs crate embeds (checked against
tiktoken's own sha256; no network), as crates/format/tests/tiktoken_reference.py does.

One run here (32 MiB, 2 cores shared with other builds, load about 7; best of 3):
seqfeed pack --tiktoken 1.39x of Python tiktoken; seqfeed pack --tokenizer 1.84x
of Python tokenizers encode_batch and 2.09x of encode_batch_fast (both sides
produce the same number of sequences).

What each side does, timed (best of SEQFEED_BENCH_ITERS, default 3):
* seqfeed: the whole `seqfeed pack` process: start, read and parse the JSON Lines,
  tokenize on all cores, pack into sequences of 2049 u32 tokens with an EOS per
  document, CRC32C and BLAKE3, write, fsync, rename.
* Python: `enc.encode_ordinary_batch(docs, num_threads=os.cpu_count())`, or
  `tok.encode_batch(docs, add_special_tokens=False)` / `encode_batch_fast` (the
  tokenizer.json with truncation and padding off, as seqfeed loads it), on the
  documents already parsed into a list of str (reading and JSON parsing are
  not timed, nor is anything written): the tokenizer alone.
* copy: read the JSON Lines file and write it to another file, then fsync.

SEQFEED_BIN names the binary (default: target/release/seqfeed, built with cargo
first). Exits 2 when tiktoken or tokenizers is not importable.
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
    print(f"{name:<54} {ratio:>8.3f}x of {ref_name} {verdict}")


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


def paragraphs():
    text = (ROOT / "crates/format/tests/data/pydoc_topics.txt").read_text()
    # Paragraphs are separated by lines holding only a form feed (pydoc's page breaks).
    return [p.strip("\n") for p in re.split(r"\n[ \t\f\r]*\n", text) if p.strip()]


def train_tokenizer(path, vocab):
    """A byte-level BPE trained on the pydoc paragraphs (and the whole pydoc_data
    topics, when importable), saved as tokenizer.json."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:
        print(f"python tokenizers is not importable ({e}); run with a python that has it", file=sys.stderr)
        sys.exit(2)
    texts = paragraphs()
    try:
        import pydoc_data.topics as topics

        texts += list(topics.topics.values())
    except ImportError:
        pass
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    import tokenizers

    ref = Tokenizer.from_file(str(path))
    ref.no_truncation()
    ref.no_padding()
    return ref, tokenizers.__version__


def make_corpus(path, mib):
    paras = paragraphs()
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
        log = {}

        def packer(tokenizer_args):
            cmd = [binary, "pack", *tokenizer_args, str(corpus), "--out", str(out),
                   "--seq-len", "2049", "--dtype", "u32"]

            def pack():
                if out.exists():
                    shutil.rmtree(out)
                r = subprocess.run(cmd, capture_output=True, text=True,
                                   env={**os.environ, "SEQFEED_LOG": "warn"})
                if r.returncode != 0:
                    sys.exit(f"seqfeed pack failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
                log["out"] = r.stdout + r.stderr
            return pack

        def packed_sequences():
            manifest = json.loads((out / "manifest.json").read_text())
            return sum(f["count"] for f in manifest["files"])

        t_pack = best_of(iters, packer(["--tiktoken", ENCODING]))
        seqs_tiktoken = packed_sequences()

        tokens = {}

        def py():
            ids = enc.encode_ordinary_batch(docs, num_threads=cpus)
            tokens["n"] = sum(map(len, ids))

        t_py = best_of(iters, py)
        # The same tokens: Python's count plus one EOS per document, against
        # the packed source's token count (whole sequences plus the remainder).
        n_tok = tokens["n"] + n_docs

        def same_tokens(name, n, seqs):
            same = "same" if seqs == n // 2049 else "DIFFERENT"
            print(f"tokens ({name}): python {n} with one EOS per document = {n // 2049} whole "
                  f"sequences of 2049; seqfeed packed {seqs} ({same})")

        same_tokens("tiktoken", n_tok, seqs_tiktoken)

        # The tokenizer.json side: the same corpus, the same process shape.
        tok_json = tmp / "pydoc-bpe" / "tokenizer.json"
        tok_json.parent.mkdir()
        hf, hf_version = train_tokenizer(tok_json, int(os.environ.get("SEQFEED_BENCH_VOCAB", "32000")))
        t_pack_hf = best_of(iters, packer(["--tokenizer", str(tok_json)]))
        seqs_hf = packed_sequences()
        hf_tokens = {}

        def py_hf():
            enc_ = hf.encode_batch(docs, add_special_tokens=False)
            hf_tokens["n"] = sum(len(e.ids) for e in enc_)

        def py_hf_fast():
            enc_ = hf.encode_batch_fast(docs, add_special_tokens=False)
            hf_tokens["fast"] = sum(len(e.ids) for e in enc_)

        t_py_hf = best_of(iters, py_hf)
        t_py_hf_fast = best_of(iters, py_hf_fast)
        n_tok_hf = hf_tokens["n"] + n_docs
        assert hf_tokens["fast"] == hf_tokens["n"]
        same_tokens("tokenizer.json", n_tok_hf, seqs_hf)

        rows = [
            ("copy (read+write+fsync)", t_copy, n_tok),
            ("seqfeed pack --tiktoken", t_pack, n_tok),
            (f"python tiktoken batch ({cpus} threads)", t_py, n_tok),
            ("seqfeed pack --tokenizer", t_pack_hf, n_tok_hf),
            ("python tokenizers encode_batch", t_py_hf, n_tok_hf),
            ("python tokenizers encode_batch_fast", t_py_hf_fast, n_tok_hf),
        ]
        for name, t, n in rows:
            print(f"{name:<40} {t:>8.3f} s  {n_docs / t:>10.0f} docs/s  {size / t / 1e6:>8.1f} MB/s of input"
                  f"  {n / t / 1e6:>7.2f} M tokens/s")
        print_ratio("seqfeed pack --tiktoken vs python tiktoken (docs/s)", n_docs / t_pack, n_docs / t_py,
                    "python tiktoken", 1.0)
        print_ratio("seqfeed pack --tokenizer vs python encode_batch", n_docs / t_pack_hf, n_docs / t_py_hf,
                    "python tokenizers encode_batch", 1.0)
        print_ratio("seqfeed pack --tokenizer vs python encode_batch_fast", n_docs / t_pack_hf,
                    n_docs / t_py_hf_fast, "python tokenizers encode_batch_fast", 1.0)
        print_ratio("seqfeed pack --tiktoken vs sequential copy (bytes/s)", size / t_pack, size / t_copy,
                    "sequential copy")
        print_ratio("seqfeed pack --tokenizer vs sequential copy (bytes/s)", size / t_pack_hf, size / t_copy,
                    "sequential copy")
        print_ratio("python tiktoken vs sequential copy (bytes/s)", size / t_py, size / t_copy,
                    "sequential copy")
        print_ratio("python encode_batch vs sequential copy (bytes/s)", size / t_py_hf, size / t_copy,
                    "sequential copy")
        print(f"python tiktoken {version}, tokenizers {hf_version} (vocabulary {hf.get_vocab_size()}); "
              f"seqfeed: {binary}")
        print(log.get("out", "").strip())


if __name__ == "__main__":
    main()
