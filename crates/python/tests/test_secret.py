"""The shared secret from a file (issue 12 item 5): Loader(secret_file=...)
and SEQFEED_SECRET_FILE, against a `seqfeed serve` node with a secret."""

import os

import pytest
import torch

import seqfeed


def _secret_file(tmp_path, name, text, mode=0o600):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_secret_file_reads_and_bad_files_name_themselves(dataset, node_factory, tmp_path, monkeypatch):
    ds, plan = dataset
    node = node_factory(ds, secret="s3cret")
    monkeypatch.delenv("SEQFEED_SECRET", raising=False)
    monkeypatch.delenv("SEQFEED_SECRET_FILE", raising=False)
    good = _secret_file(tmp_path, "secret", "s3cret\n")
    kw = dict(dataset=ds, nodes=[node.addr], transport="tcp", dp_rank=0, dp_size=1, io_timeout_ms=2000)
    local = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)]
    remote = [b.tokens.clone() for b in seqfeed.Loader(plan, secret_file=good, **kw)]
    assert len(remote) == len(local)
    for a, b in zip(local, remote):
        assert torch.equal(a, b)
    # The environment variable does the same.
    monkeypatch.setenv("SEQFEED_SECRET_FILE", str(good))
    # Counted, not kept: a list of batches would hold every step buffer.
    assert sum(1 for _ in seqfeed.Loader(plan, **kw)) == len(local)
    monkeypatch.delenv("SEQFEED_SECRET_FILE")
    wrong = _secret_file(tmp_path, "wrong", "nope\n")
    with pytest.raises(seqfeed.SeqfeedError, match="wrong shared secret"):
        next(seqfeed.Loader(plan, secret_file=wrong, **kw))
    world = _secret_file(tmp_path, "world-readable", "s3cret\n", 0o644)
    with pytest.raises(seqfeed.SeqfeedError, match="world-readable.*chmod 600"):
        next(seqfeed.Loader(plan, secret_file=world, **kw))
    with pytest.raises(seqfeed.SeqfeedError, match="no-such-file"):
        next(seqfeed.Loader(plan, secret_file=tmp_path / "no-such-file", **kw))
    with pytest.raises(seqfeed.SeqfeedError, match="once"):
        next(seqfeed.Loader(plan, secret="s3cret", secret_file=good, **kw))
