"""A trainer host that holds no data: storage nodes serve their own
directories (``seqfeed place --stage``: every manifest plus the files placed
on that node), the trainer's working directory holds plan.toml and
cluster.toml only, and ``seqfeed.Loader`` opens the plan from the manifests
the nodes publish. Rows are compared with the storage hosts' files; the
trainer process maps no ``.seq`` file; EOD ids come from the manifests."""

import json
import os
import pathlib
import subprocess
import time

import numpy as np
import pytest
import torch

import seqfeed
from seqfeed import _loader

from conftest import make_dataset, run, seqfeed_bin, write_plan


class Served:
    """``seqfeed serve`` on 127.0.0.1, port 0, its address from --addr-file."""

    def __init__(self, root, name, cluster, secret=None):
        self.addr_file = root.parent / f".{name}.addr"
        env = dict(os.environ)
        env.pop("SEQFEED_SECRET", None)
        if secret:
            env["SEQFEED_SECRET"] = secret
        self.proc = subprocess.Popen(
            [seqfeed_bin(), "--log", "warn", "serve", "--dataset", str(root), "--cluster", str(cluster),
             "--name", name, "--listen", "127.0.0.1:0", "--addr-file", str(self.addr_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.time() + 30
        while not (self.addr_file.exists() and self.addr_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"seqfeed serve exited: {self.proc.stderr.read().decode()}")
            if time.time() > deadline:
                raise RuntimeError("seqfeed serve did not start")
            time.sleep(0.05)
        self.addr = self.addr_file.read_text().strip()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path):
    """Two storage hosts (a, b), each serving only its placed files (one
    replica), and a trainer directory with plan.toml and cluster.toml only."""
    ds = make_dataset(tmp_path, docs=(300, 200))
    plan_text = write_plan(tmp_path / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 12).read_text()
    stage = tmp_path / "storage"
    stage.mkdir()
    placed = tmp_path / "placed.toml"
    run("--log", "warn", "place", "--dataset", ds, "--nodes", "a=127.0.0.1:1,b=127.0.0.1:2",
        "--replicas", 1, "--out", placed, "--stage", stage)
    nodes = [Served(stage / n, n, placed) for n in ("a", "b")]
    trainer = tmp_path / "trainer"
    trainer.mkdir()
    (trainer / "plan.toml").write_text(plan_text)
    text = placed.read_text()
    for n, placeholder in zip(nodes, ('"127.0.0.1:1"', '"127.0.0.1:2"')):
        text = text.replace(placeholder, f'"{n.addr}"')
    (trainer / "cluster.toml").write_text(text)
    yield ds, stage, trainer, nodes
    for n in nodes:
        n.kill()


def seq_files_mapped():
    """``.seq`` files this process has mapped or open."""
    found = [line for line in pathlib.Path("/proc/self/maps").read_text().splitlines() if ".seq" in line]
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".seq"):
            found.append(target)
    return found


def test_a_trainer_with_only_plan_and_cluster_reads_the_storage_hosts_files(cluster, monkeypatch):
    ds, stage, trainer, _ = cluster
    monkeypatch.chdir(trainer)
    assert sorted(os.listdir(trainer)) == ["cluster.toml", "plan.toml"]
    # Every storage host holds only its own files.
    held = {n: sorted(str(p.relative_to(stage / n)) for p in (stage / n).rglob("*.seq")) for n in ("a", "b")}
    assert held["a"] and held["b"] and not set(held["a"]) & set(held["b"])
    _loader._PLANS.clear()
    loader = seqfeed.Loader("plan.toml", cluster="cluster.toml", transport="tcp", dtype="native",
                            dp_rank=0, dp_size=2, eod_token=False)
    mine = [(b.positions, b.tokens.numpy().copy()) for b in loader]
    assert len(mine) == 12
    assert seq_files_mapped() == [], "the trainer process mapped a sequence file"
    # The same plan opened against the dataset: same fingerprints.
    local = seqfeed.plan_stats(str(trainer / "plan.toml"), dataset=str(ds))
    assert loader.plan_info["fingerprint"] == local["fingerprint"]
    assert loader.plan_info["dataset_fingerprint"] == local["dataset_fingerprint"]
    # Every row equals the bytes at the plan's offset in the storage host's file.
    for step, (positions, rows) in enumerate(mine):
        shown = seqfeed.plan_show(str(trainer / "plan.toml"), step, dataset=str(ds), dp_rank=0, dp_size=2)
        assert [r["position"] for r in shown] == list(positions)
        for r, row in zip(shown, rows):
            owner = "a" if r["file"] in held["a"] else "b"
            assert r["file"] in held[owner]
            with open(stage / owner / r["file"], "rb") as f:
                f.seek(r["offset"])
                want = np.frombuffer(f.read(row.nbytes), dtype=np.uint16)
            assert np.array_equal(row, want), (step, r)


def test_the_plan_is_opened_once_per_process(cluster, monkeypatch):
    _, _, trainer, _ = cluster
    monkeypatch.chdir(trainer)
    _loader._PLANS.clear()
    kw = dict(cluster="cluster.toml", transport="tcp", dp_rank=0, dp_size=1)
    a = seqfeed.Loader("plan.toml", **kw)
    b = seqfeed.Loader("plan.toml", micro_batch=4, **kw)
    assert len(_loader._PLANS) == 1
    assert a._plan is b._plan
    a.close()
    b.close()


def test_eod_comes_from_the_manifests(cluster, tmp_path, monkeypatch):
    ds, _, trainer, _ = cluster
    monkeypatch.chdir(trainer)
    # conftest packs with --eos 0: both manifests record it.
    manifest = json.loads((ds / "web" / "manifest.json").read_text())
    assert manifest["special_tokens"] == {"eos": 0}
    loader = seqfeed.Loader("plan.toml", cluster="cluster.toml", transport="tcp", dp_rank=0, dp_size=1,
                            labels=True, eod_mask_loss=True, reset_position_ids=True)
    assert loader.eod_token == 0
    b = next(loader)
    assert torch.equal(b.loss_mask == 0, b.input_ids == 0)
    loader.close()


def test_eod_defaults_refuse_what_they_cannot_know(tmp_path):
    # No EOS recorded (packed without --eos): masking needs an id.
    tokens = np.arange(1, 4001, dtype=np.uint16)
    np.save(tmp_path / "t.npy", tokens)
    run("pack", "--out", tmp_path / "plain" / "web", "--seq-len", 9, "--dtype", "u16", tmp_path / "t.npy")
    run("pack", "--out", tmp_path / "plain" / "code", "--seq-len", 9, "--dtype", "u16", "--eos", 7,
        tmp_path / "t.npy")
    one = write_plan(tmp_path / "one.toml", [("web", 1)], 8, 4)
    both = write_plan(tmp_path / "both.toml", [("web", 1), ("code", 1)], 8, 4)
    data = tmp_path / "plain"
    plain = seqfeed.Loader(one, dataset=data, dp_rank=0, dp_size=1)
    assert plain.eod_token is None and next(plain).loss_mask is None
    plain.close()
    with pytest.raises(seqfeed.SeqfeedError, match="eod_mask_loss and reset_position_ids need the EOD id"):
        seqfeed.Loader(one, dataset=data, dp_rank=0, dp_size=1, eod_mask_loss=True)
    # Sources that disagree are named; an explicit id settles it.
    with pytest.raises(seqfeed.SeqfeedError, match=r"code: 7, web: none recorded"):
        seqfeed.Loader(both, dataset=data, dp_rank=0, dp_size=1)
    ok = seqfeed.Loader(both, dataset=data, dp_rank=0, dp_size=1, eod_token=7)
    assert ok.eod_token == 7
    ok.close()
    off = seqfeed.Loader(both, dataset=data, dp_rank=0, dp_size=1, eod_token=False)
    assert off.eod_token is None
    off.close()
    with pytest.raises(seqfeed.SeqfeedError, match="does not fit the dataset's 16-bit token ids"):
        seqfeed.Loader(one, dataset=data, dp_rank=0, dp_size=1, eod_token=100257)


def test_an_eod_outside_the_tokenizers_vocabulary_is_refused(tmp_path):
    pytest.importorskip("tiktoken")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(40)))
    run("pack", "--out", tmp_path / "data" / "web", "--seq-len", 17, "--dtype", "u32",
        "--tiktoken", "r50k_base", docs)
    manifest = json.loads((tmp_path / "data" / "web" / "manifest.json").read_text())
    assert manifest["special_tokens"]["eos"] == 50256
    plan = write_plan(tmp_path / "plan.toml", [("web", 1)], 4, 3)
    l = seqfeed.Loader(plan, dataset=tmp_path / "data", dp_rank=0, dp_size=1)
    assert l.eod_token == 50256
    l.close()
    # The README's cl100k id on an r50k_base pack: refused, naming both.
    with pytest.raises(seqfeed.SeqfeedError, match=r"eod_token 100257 is outside the vocabulary of source 'web'.*r50k_base.*n_vocab 50257"):
        seqfeed.Loader(plan, dataset=tmp_path / "data", dp_rank=0, dp_size=1, eod_token=100257)


def test_unreachable_nodes_and_wrong_secrets_raise_when_the_loader_is_built(cluster, tmp_path, monkeypatch):
    _, _, trainer, nodes = cluster
    monkeypatch.chdir(trainer)
    dead = tmp_path / "dead.toml"
    dead.write_text(
        (trainer / "cluster.toml").read_text().replace(nodes[0].addr, "127.0.0.1:1").replace(nodes[1].addr, "127.0.0.1:2")
    )
    _loader._PLANS.clear()
    t = time.time()
    with pytest.raises(seqfeed.SeqfeedError) as e:
        seqfeed.Loader("plan.toml", cluster=str(dead), transport="tcp", dp_rank=0, dp_size=1, io_timeout_ms=500)
    assert "no storage node described the dataset" in str(e.value)
    assert "a: " in str(e.value) and "b: " in str(e.value) and "127.0.0.1:2" in str(e.value)
    assert time.time() - t < 20
    # A secret the nodes do not hold: refused at construction, said as such.
    with pytest.raises(seqfeed.SeqfeedError, match="holds a shared secret but node"):
        seqfeed.Loader("plan.toml", cluster="cluster.toml", transport="tcp", dp_rank=0, dp_size=1, secret="s3cret")
