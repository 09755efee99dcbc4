"""Not a test module: scripts/test.sh runs mypy on it against the installed
wheel, to check what a user's type checker sees of seqfeed (the stubs of
seqfeed._native, py.typed, the lazily imported names)."""

from typing import Any, Optional

import torch

import seqfeed
from seqfeed import _native


def plan_steps(plan: str, dataset: str) -> int:
    st: dict[str, Any] = seqfeed.plan_stats(plan, dataset=dataset)
    rows: list[dict[str, Any]] = seqfeed.plan_show(plan, 0, 2, dataset=dataset)
    src: dict[str, Any] = seqfeed.inspect_source(dataset + "/web", seq=0)
    version: str = seqfeed.__version__
    return int(st["steps"]) + len(rows) + len(src) + len(version)


def first_batch(loader: seqfeed.Loader) -> Optional[torch.Tensor]:
    for b in loader:
        batch: seqfeed.Batch = b
        ids: torch.Tensor = batch.input_ids
        step: int = batch.step
        native: _native.NativeBatch = batch.native
        shape: tuple[int, int] = native.shape
        assert ids.dim() == 2 and step >= 0 and shape[0] > 0
        return batch.labels
    return None


def native_plan(plan: str) -> Optional[_native.NativeBatch]:
    p = _native.open_plan(plan, dataset="data", transport="local")
    nl = _native.NativeLoader(p, device="cpu", dp_rank=0, dp_size=1)
    fp: str = nl.plan_fingerprint
    assert fp == p.fingerprint
    try:
        return nl.next_batch()
    except seqfeed.SeqfeedError:
        return None
