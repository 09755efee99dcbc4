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

from ._native import SeqfeedError, __version__, inspect_source, plan_show, plan_stats
from ._cp import context_parallel_slice
from ._labels import loss_mask_and_position_ids
from ._loader import Batch, Loader
from ._parallel import data_parallel_from_env, data_parallel_from_megatron, data_parallel_from_mesh


def __getattr__(name):
    # torch.utils.data (torchtitan, lightning, transformers) are imported only when the wrappers are used.
    if name == "SeqfeedDataset":
        from .data import SeqfeedDataset

        return SeqfeedDataset
    if name == "TorchtitanDataLoader":
        from ._torchtitan import TorchtitanDataLoader

        return TorchtitanDataLoader
    if name == "SeqfeedDataModule":
        from ._lightning import SeqfeedDataModule

        return SeqfeedDataModule
    if name in ("SeqfeedTrainer", "hf_collate"):
        from . import _hf

        return getattr(_hf, name)
    raise AttributeError(f"module 'seqfeed' has no attribute {name!r}")


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
