"""``device="cuda"`` means this process's GPU (issue 17 D1): torch's current
device, or LOCAL_RANK under a launcher that never set one; an explicit index
is kept. Resolution is checked without a GPU by standing in torch.cuda's
answers; the CUDA loader itself is in test_cuda.py."""

import pytest
import torch

import seqfeed
from seqfeed import _loader


def test_cuda_without_an_index_is_the_local_rank_under_a_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert _loader._cuda_device(torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert _loader._cuda_device(torch.device("cuda")) == torch.device("cuda", 3)
    # A device the process chose itself wins over LOCAL_RANK.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 5)
    assert _loader._cuda_device(torch.device("cuda")) == torch.device("cuda", 5)
    # An explicit index and the CPU are kept.
    assert _loader._cuda_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert _loader._cuda_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(seqfeed.SeqfeedError, match="LOCAL_RANK='x'"):
        _loader._cuda_device(torch.device("cuda"))
