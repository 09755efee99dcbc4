"""Which data-parallel rank a process is.

seqfeed splits each step by data-parallel rank and size: tensor-, context-
and pipeline-parallel peers (same data-parallel rank) must read identical
batches. Only the trainer knows its layout, so in a job of several ranks
seqfeed refuses to guess it: pass ``dp_rank``/``dp_size``, or take them from
the trainer's own layout with :func:`data_parallel_from_mesh` (a
``DeviceMesh``, as torchtitan builds it) or :func:`data_parallel_from_megatron`.
"""

import math
import os

from ._native import SeqfeedError


def _int_env(name):
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SeqfeedError(f"environment variable {name}={value!r}: not an integer") from None


def data_parallel_from_env():
    """``(dp_rank, dp_size)`` when no parallel layout is given.

    ``SEQFEED_DP_RANK``/``SEQFEED_DP_SIZE`` when set; else ``(0, 1)`` for a
    single process. In a job of several ranks (``torch.distributed``
    initialized with a world size above 1, or ``WORLD_SIZE`` > 1 as torchrun
    sets it) it raises ``SeqfeedError``: the global rank is the
    data-parallel rank only without tensor, context or pipeline parallelism,
    and guessing wrong would feed such peers different batches without an
    error. Pass the layout explicitly:

    * plain data parallelism (DDP/FSDP only):
      ``dp_rank=dist.get_rank(), dp_size=dist.get_world_size()``;
    * a ``DeviceMesh``: ``seqfeed.data_parallel_from_mesh(mesh, "dp")``;
    * Megatron-core: ``seqfeed.data_parallel_from_megatron()``;
    * or set ``SEQFEED_DP_RANK``/``SEQFEED_DP_SIZE``.
    """
    r, s = _int_env("SEQFEED_DP_RANK"), _int_env("SEQFEED_DP_SIZE")
    if (r is None) != (s is None):
        raise SeqfeedError("SEQFEED_DP_RANK and SEQFEED_DP_SIZE must be set together")
    if r is not None:
        return r, s
    world, where = None, None
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world, where = dist.get_world_size(), "torch.distributed is initialized"
    except ImportError:
        pass
    if world is None:
        world, where = _int_env("WORLD_SIZE"), "WORLD_SIZE is set"
    if world is not None and world > 1:
        raise SeqfeedError(
            f"no data-parallel layout given, and this process is one of {world} ranks ({where}): "
            "seqfeed cannot tell data-parallel ranks from tensor-, context- or pipeline-parallel "
            "peers, which must read identical batches. Pass dp_rank= and dp_size= (plain data "
            "parallelism: dp_rank=torch.distributed.get_rank(), "
            "dp_size=torch.distributed.get_world_size()), or use "
            'seqfeed.data_parallel_from_mesh(mesh, "dp") / seqfeed.data_parallel_from_megatron(), '
            "or set SEQFEED_DP_RANK and SEQFEED_DP_SIZE"
        )
    return 0, 1


def data_parallel_from_megatron():
    """``(dp_rank, dp_size)`` from Megatron-core's ``parallel_state``
    (after ``initialize_model_parallel``)."""
    from megatron.core import parallel_state

    return (
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(),
    )


# A DeviceMesh's replicate and shard dimensions (HSDP, as torchtitan names
# them): together they are the data-parallel layout; either alone leaves
# ranks of the other reading the same rows.
_HSDP = ("dp_replicate", "dp_shard")


def data_parallel_from_mesh(mesh, dim="dp"):
    """``(dp_rank, dp_size)`` from a ``torch.distributed.device_mesh.DeviceMesh``.

    ``dim`` names the data-parallel dimension, or a tuple of dimensions whose
    ranks together read different data (HSDP:
    ``("dp_replicate", "dp_shard")``); the rank is this process's coordinate
    over them in that order (row-major), the size their product. A flattened
    dimension (torchtitan's ``"dp"``, made with ``mesh[...]._flatten("dp")``)
    is taken like any other. Naming only one of ``"dp_replicate"`` /
    ``"dp_shard"`` while the other has more than one rank is refused (the
    replicas would read the same data), as is a dimension that folds in
    context parallelism (``"dp_shard_cp"``, ``"dp_cp"``): context-parallel
    peers must read identical rows.

    Example (torchtitan)::

        dp_rank, dp_size = seqfeed.data_parallel_from_mesh(world_mesh, "dp")
    """
    dims = (dim,) if isinstance(dim, str) else tuple(dim)
    if not dims or not all(isinstance(d, str) for d in dims):
        raise ValueError(f"dim {dim!r}: expected a dimension name or a tuple of names")
    for d in dims:
        if "cp" in d.split("_"):
            raise SeqfeedError(
                f"mesh dimension {d!r} includes context parallelism: context-parallel peers must read "
                'identical rows. Name the data-parallel dimensions only (e.g. "dp", or '
                '("dp_replicate", "dp_shard"))'
            )
    names = tuple(mesh.mesh_dim_names or ())
    for a, b in (_HSDP, _HSDP[::-1]):
        if a in dims and b not in dims and b in names and mesh.size(names.index(b)) > 1:
            raise SeqfeedError(
                f"mesh dimension {a!r} alone is not the data-parallel layout: the mesh also has {b!r} "
                f"of size {mesh.size(names.index(b))}, whose ranks would read the same rows. Pass "
                f'("dp_replicate", "dp_shard") or the flattened "dp" dimension'
            )
    try:
        sub = mesh[dims[0]] if len(dims) == 1 else mesh[dims]
    except (KeyError, RuntimeError, ValueError) as e:
        raise SeqfeedError(
            f"the device mesh has no dimension(s) {dim!r} (it has {names}, plus any flattened ones): {e}"
        ) from None
    if sub.ndim == 1:
        return sub.get_local_rank(), sub.size()
    coord = sub.get_coordinate()
    if coord is None:
        raise SeqfeedError(f"this process is not part of the device mesh's {dim!r} dimensions")
    shape = tuple(sub.mesh.shape)
    rank = 0
    for c, n in zip(coord, shape):
        rank = rank * n + c
    return rank, math.prod(shape)
