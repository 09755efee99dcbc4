"""Fixtures: real packed datasets made with the seqfeed CLI, real nodes."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
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
    """A port that is free now and may be taken by the time it is used
    (bind-then-close). Only for an address nothing must listen on (a
    "dead node"); a listener picks its port with port 0 and reports it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_addr_file(path, proc, what="seqfeed serve", timeout=30):
    """The `host:port` a process wrote to `path` once listening (port 0)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            text = path.read_text().strip()
            if text:
                return text
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{what} exited: {err}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not write {path}")


def serve_port0(dataset, name, addr_file, cluster=None, env=None, stderr=subprocess.PIPE):
    """`seqfeed serve` on 127.0.0.1 port 0 (the kernel picks a free port, so
    no other process can take it between choosing and binding); returns the
    process and its `host:port`, read from its --addr-file."""
    args = [seqfeed_bin(), "serve", "--dataset", str(dataset), "--listen", "127.0.0.1:0",
            "--name", name, "--addr-file", str(addr_file)]
    if cluster:
        args += ["--cluster", str(cluster)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        return proc, wait_addr_file(pathlib.Path(addr_file), proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


class Node:
    """A `seqfeed serve` process on 127.0.0.1, on a port the kernel picked."""

    def __init__(self, dataset, name="a", secret=None, cluster=None):
        env = dict(os.environ)
        env.pop("SEQFEED_SECRET", None)
        if secret:
            env["SEQFEED_SECRET"] = secret
        self._dir = pathlib.Path(tempfile.mkdtemp(prefix="seqfeed-node-"))
        self.proc, self.addr = serve_port0(dataset, name, self._dir / "addr", cluster=cluster, env=env)
        self.port = int(self.addr.rsplit(":", 1)[1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


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
