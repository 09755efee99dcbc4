"""seqfeed for PyTorch: training batches from seqfeed storage nodes as torch tensors.

The Rust loader does the work (plan, reads over RDMA / TCP / local files,
prefetch, fail-over); this package hands each micro-batch to torch through
DLPack without a copy::

    import seqfeed
    loader = seqfeed.Loader("plan.toml", cluster="cluster.toml",
                            device="cpu", labels=True)
    for batch in loader:
        logits = model(batch.input_ids)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten())

See ``Loader`` for every option, ``SeqfeedDataset`` for
``torch.utils.data.DataLoader`` / ``StatefulDataLoader``, and
``data_parallel_from_megatron`` / ``data_parallel_from_mesh`` for
tensor- and pipeline-parallel jobs.
"""

import typing as _typing

# Torch-free at import: the plan and inspect functions work on a host without
# torch (a storage node, a notebook that only looks at a plan). torch is
# imported on first use of the names in _LAZY below.
from ._native import SeqfeedError, __version__, inspect_source, plan_show, plan_stats
from ._parallel import data_parallel_from_env, data_parallel_from_megatron, data_parallel_from_mesh

if _typing.TYPE_CHECKING:
    from ._cp import context_parallel_slice
    from ._labels import loss_mask_and_position_ids
    from ._loader import Batch, Loader
    from .data import SeqfeedDataset

# name -> the submodule that defines it (and imports torch).
_LAZY = {
    "Batch": "_loader",
    "Loader": "_loader",
    "SeqfeedDataset": "data",
    "loss_mask_and_position_ids": "_labels",
    "context_parallel_slice": "_cp",
    # The framework adapters also import their framework (torchtitan,
    # lightning, transformers) on first use.
    "TorchtitanDataLoader": "_torchtitan",
    "SeqfeedDataModule": "_lightning",
    "SeqfeedTrainer": "_hf",
    "hf_collate": "_hf",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'seqfeed' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as e:
        if e.name != "torch" and not (e.name or "").startswith("torch."):
            raise
        raise ModuleNotFoundError(
            f"seqfeed.{name} needs PyTorch, which is not installed in this environment "
            f"({e}); install it with `pip install 'torch>=2.3'` (plan_stats, plan_show "
            "and inspect_source work without it)",
            name=e.name,
        ) from e
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Batch",
    "Loader",
    "SeqfeedDataModule",
    "SeqfeedDataset",
    "SeqfeedError",
    "SeqfeedTrainer",
    "TorchtitanDataLoader",
    "context_parallel_slice",
    "data_parallel_from_env",
    "data_parallel_from_megatron",
    "data_parallel_from_mesh",
    "hf_collate",
    "inspect_source",
    "loss_mask_and_position_ids",
    "plan_show",
    "plan_stats",
    "__version__",
]
