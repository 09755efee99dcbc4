"""SeqfeedDataset with torch's DataLoader and torchdata's StatefulDataLoader;
num_workers > 0, fork and Ctrl-C."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch.utils.data import DataLoader

import seqfeed


def test_dataloader_batch_size_none_yields_the_loaders_batches(dataset):
    ds, plan = dataset
    kw = dict(dataset=ds, labels=True, dp_rank=1, dp_size=2, micro_batch=2)
    want = [b.tokens.clone() for b in seqfeed.Loader(plan, **kw)]
    got = list(DataLoader(seqfeed.SeqfeedDataset(plan, format="megatron", prefetch=30, **kw),
                          batch_size=None, num_workers=0))
    assert len(got) == len(want) == 24
    for g, w in zip(got, want):
        assert torch.equal(g["tokens"], w[:, :-1]) and torch.equal(g["labels"], w[:, 1:])


def test_worker_processes_are_refused_with_a_clear_message(dataset):
    ds, plan = dataset
    dl = DataLoader(seqfeed.SeqfeedDataset(plan, format="hf", dataset=ds, dp_rank=0, dp_size=1), batch_size=None, num_workers=2)
    with pytest.raises(Exception, match="num_workers=0"):
        next(iter(dl))


def test_a_forked_child_cannot_use_a_started_loader(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)
    next(loader)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            next(loader)
            msg = b"no error"
        except seqfeed.SeqfeedError as e:
            msg = str(e).encode()
        os.write(w, msg[:4000])
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 4096).decode()
    assert "cannot be used in process" in msg and "num_workers=0" in msg, msg
    # The parent's loader is unharmed.
    assert next(loader).step == 1


def test_stateful_dataloader_resumes_exactly(dataset):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    ds, plan = dataset
    kw = dict(dataset=ds, dp_rank=0, dp_size=1, micro_batch=4)
    want = [b.tokens.clone() for b in seqfeed.Loader(plan, **kw)]
    kw["format"] = "hf"
    dl = sdl.StatefulDataLoader(seqfeed.SeqfeedDataset(plan, **kw), batch_size=None, num_workers=0)
    it = iter(dl)
    first = [next(it)["input_ids"].clone() for _ in range(9)]
    state = dl.state_dict()
    dl2 = sdl.StatefulDataLoader(seqfeed.SeqfeedDataset(plan, **kw), batch_size=None, num_workers=0)
    dl2.load_state_dict(state)
    rest = [b["input_ids"].clone() for b in dl2]  # zero-copy views: copy what is kept
    assert len(first) + len(rest) == len(want) == 24
    for g, w in zip(first + rest, want):
        assert torch.equal(g, w)


def test_ctrl_c_stops_a_waiting_loop_and_its_reader(dataset):
    """A loop blocked in next() (the consumer holds the ring) gets
    KeyboardInterrupt on SIGINT; the loader's threads stop."""
    ds, plan = dataset
    script = textwrap.dedent(
        f"""
        import sys, threading, seqfeed
        l = seqfeed.Loader({str(plan)!r}, dataset={str(ds)!r}, prefetch=1, ring_wait_ms=120000, dp_rank=0, dp_size=1)
        held = [next(l), next(l)]
        print("waiting", flush=True)
        try:
            next(l)
        except KeyboardInterrupt:
            print("interrupted", l._native is None, threading.active_count(), flush=True)
            sys.exit(0)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.5)
    t = time.time()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert time.time() - t < 5
    assert p.returncode == 0, out
    assert out.strip() == "interrupted True 1", out
