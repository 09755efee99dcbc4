"""Fixtures: real packed datasets made with the seqfeed CLI, real nodes."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def seqfeed_bin():
    """The seqfeed CLI: $SEQFEED_BIN, else the workspace's build."""
    env = os.environ.get("SEQFEED_BIN")
    if env:
        return env
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "seqfeed"
        if p.exists():
            return str(p)
    found = shutil.which("seqfeed")
    if found:
        return found
    pytest.fail("no seqfeed binary: build it (cargo build --release -p seqfeed) or set SEQFEED_BIN")


def run(*args, **kw):
    return subprocess.run([seqfeed_bin(), *map(str, args)], check=True, capture_output=True, text=True, **kw)


def write_plan(path, sources, global_batch, steps, seed=7):
    text = f"seed = {seed}\nglobal_batch = {global_batch}\n[run]\nsteps = {steps}\n"
    for name, weight in sources:
        text += f'[[sources]]\nname = "{name}"\nweight = {weight}\nmax_epochs = 50.0\n'
    path.write_text(text)
    return path


def make_dataset(tmp, seq_len=65, docs=(300, 200), eos=0, seed=1):
    """Two sources packed from random token documents (u16, EOS between
    documents), and a plan over them."""
    rng = np.random.default_rng(seed)
    ds = tmp / "data"
    for name, n in zip(("web", "code"), docs):
        parts = []
        for _ in range(n):
            parts.append(rng.integers(1, 50000, size=int(rng.integers(5, 120)), dtype=np.uint16))
            parts.append(np.array([eos], dtype=np.uint16))
        # One .npy is one document to pack: the documents inside it end in
        # EOS already (ids 1.. are text, 0 is EOS only).
        arr = np.concatenate(parts[:-1])
        src = tmp / f"{name}.npy"
        np.save(src, arr)
        run("pack", "--out", ds / name, "--seq-len", seq_len, "--dtype", "u16", "--eos", eos, src)
    return ds


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path)
    plan = write_plan(tmp_path / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 12)
    return ds, plan


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """A `seqfeed serve` process on 127.0.0.1."""

    def __init__(self, dataset, name="a", secret=None, cluster=None):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        args = [seqfeed_bin(), "serve", "--dataset", str(dataset), "--listen", self.addr, "--name", name]
        if cluster:
            args += ["--cluster", str(cluster)]
        env = dict(os.environ)
        env.pop("SEQFEED_SECRET", None)
        if secret:
            env["SEQFEED_SECRET"] = secret
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"seqfeed serve exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("seqfeed serve did not start")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def node_factory():
    nodes = []

    def make(*a, **kw):
        n = Node(*a, **kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.kill()
