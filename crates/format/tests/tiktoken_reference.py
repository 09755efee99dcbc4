#!/usr/bin/env python3
"""Reference token ids from OpenAI's Python tiktoken, for crates/format/tests/text.rs.

Usage: tiktoken_reference.py ENCODING DOCS.jsonl OUT.json [--field text] [--assets DIR]

Python tiktoken downloads its rank files from the internet, which these tests
must not need. Instead this script loads the very `.tiktoken` file that the
tiktoken-rs crate embeds (the version in Cargo.lock, found in the cargo registry sources, or
with `cargo metadata`, or given with --assets), checks it against the sha256 that tiktoken
itself expects for that encoding, and builds the encoding from tiktoken's own
parameters (pattern, special tokens) in tiktoken_ext/openai_public.py.

Every record's text is encoded with `encode_ordinary` (special-token text is
ordinary text), as `seqfeed pack --tiktoken` does. OUT.json gets
{"encoding", "asset", "sha256", "n_vocab", "eot_token", "docs": [[ids...], ...]}.

Exits with status 3 (and a line starting with SKIP on stderr) when tiktoken is
not importable or the asset cannot be found.
"""
import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def skip(msg):
    print(f"SKIP: {msg}", file=sys.stderr)
    sys.exit(3)


def locked_version(start):
    """The tiktoken-rs version in the workspace's Cargo.lock, if one is found."""
    for d in [start, *start.parents]:
        lock = d / "Cargo.lock"
        if lock.is_file():
            for block in lock.read_text().split("[[package]]"):
                if 'name = "tiktoken-rs"' in block:
                    for line in block.splitlines():
                        if line.startswith("version = "):
                            return line.split('"')[1]
            return None
    return None


def find_assets(explicit):
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve().parent
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    version = locked_version(here)
    if version:
        # The exact version the workspace builds against.
        found = sorted(glob.glob(f"{home}/registry/src/*/tiktoken-rs-{version}/assets"))
        if found:
            return Path(found[-1])
    cargo = os.environ.get("CARGO", "cargo")
    try:
        out = subprocess.run(
            [cargo, "metadata", "--format-version", "1"],
            cwd=here,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        for pkg in json.loads(out)["packages"]:
            if pkg["name"] == "tiktoken-rs":
                return Path(pkg["manifest_path"]).parent / "assets"
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError) as e:
        print(f"cargo metadata failed: {e}", file=sys.stderr)
    skip(f"cannot find the assets of tiktoken-rs {version or '(not in Cargo.lock)'} under {home}/registry/src (run cargo fetch, or pass --assets)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("encoding")
    ap.add_argument("docs")
    ap.add_argument("out")
    ap.add_argument("--field", default="text")
    ap.add_argument("--assets")
    args = ap.parse_args()
    try:
        import tiktoken
        import tiktoken.load
        import tiktoken_ext.openai_public as openai_public
    except ImportError as e:
        skip(f"python tiktoken is not importable ({e}); pip install tiktoken")

    asset = find_assets(args.assets) / f"{args.encoding}.tiktoken"
    if not asset.is_file():
        skip(f"{asset} does not exist")
    data = asset.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()

    def load_local(url, expected_hash=None):
        # tiktoken's constructor names the download URL and the file's sha256;
        # load the crate's copy instead and insist on that same hash.
        if url.rsplit("/", 1)[-1] != asset.name:
            raise SystemExit(f"unexpected rank file {url} for {asset}")
        if expected_hash and expected_hash != sha256:
            raise SystemExit(f"{asset}: sha256 {sha256} is not tiktoken's {expected_hash}")
        return tiktoken.load.load_tiktoken_bpe(str(asset), expected_hash=expected_hash)

    openai_public.load_tiktoken_bpe = load_local
    ctor = getattr(openai_public, args.encoding, None)
    if ctor is None:
        raise SystemExit(f"tiktoken has no encoding {args.encoding}")
    enc = tiktoken.Encoding(**ctor())

    docs = []
    with open(args.docs, "rb") as f:
        for line in f:
            if line.strip():
                docs.append(enc.encode_ordinary(json.loads(line)[args.field]))
    with open(args.out, "w") as f:
        json.dump(
            {
                "encoding": args.encoding,
                "asset": str(asset),
                "sha256": sha256,
                "n_vocab": enc.n_vocab,
                "eot_token": enc.eot_token,
                "docs": docs,
            },
            f,
        )
    print(f"{args.encoding}: {len(docs)} documents, {sum(map(len, docs))} tokens from {asset}")


if __name__ == "__main__":
    main()
