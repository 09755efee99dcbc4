"""Prepares the example's data: real English text tokenized with a real tokenizer.

Two sources of real prose that ship with Python itself (no download):
  * ``topics``: the help topics of the Python documentation (``pydoc_data.topics``);
  * ``stdlib``: the module docstrings of the standard library's ``.py`` files.

Each is written as JSON Lines and packed by ``seqfeed pack --tiktoken r50k_base``
(GPT-2's BPE, embedded in seqfeed; every document ends with ``<|endoftext|>``,
id 50256) at ``seq_len + 1`` tokens per sequence, so batches give
``input_ids``/``labels`` as views. Then a plan and a cluster file for two
storage nodes that both hold every file (2 replicas).

    python prepare_corpus.py --out /tmp/gpt --seq-len 64 --global-batch 16 --steps 60
"""

import argparse
import ast
import json
import os
import pathlib
import subprocess
import sysconfig

EOD = 50256


def topics():
    from pydoc_data.topics import topics as t

    for name in sorted(t):
        text = t[name].strip()
        if len(text) > 200:
            yield text


def stdlib_docstrings(limit=800):
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    n = 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) > 200:
            yield doc
            n += 1
            if n >= limit:
                return


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--seqfeed", default=os.environ.get("SEQFEED_BIN", "seqfeed"), help="the seqfeed CLI")
    ap.add_argument("--seq-len", type=int, default=64, help="model context; sequences hold seq_len + 1 tokens")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    for name, docs in (("topics", topics()), ("stdlib", stdlib_docstrings())):
        jsonl = out / f"{name}.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for text in docs:
                f.write(json.dumps({"text": text}) + "\n")
        subprocess.run(
            [args.seqfeed, "pack", "--tiktoken", "r50k_base", "--text-field", "text",
             "--seq-len", str(args.seq_len + 1), "--dtype", "u16", "--out", str(data / name), str(jsonl)],
            check=True,
        )
    (out / "plan.toml").write_text(
        f"seed = {args.seed}\nglobal_batch = {args.global_batch}\n[run]\nsteps = {args.steps}\n"
        '[[sources]]\nname = "topics"\nweight = 0.6\nmax_epochs = 100.0\n'
        '[[sources]]\nname = "stdlib"\nweight = 0.4\nmax_epochs = 100.0\n'
    )
    print(json.dumps({"data": str(data), "plan": str(out / "plan.toml"), "eod": EOD}))


if __name__ == "__main__":
    main()
