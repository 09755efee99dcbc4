"""Which data-parallel rank a process is.

seqfeed splits each step by data-parallel rank and size: tensor- and
pipeline-parallel peers (same data-parallel rank) read identical batches.
"""

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

    In order: ``SEQFEED_DP_RANK``/``SEQFEED_DP_SIZE``; ``torch.distributed``
    when it is initialized (plain data parallelism: every rank is its own
    data-parallel rank); ``RANK``/``WORLD_SIZE`` (as torchrun sets them);
    else ``(0, 1)``. With tensor or pipeline parallelism, pass the
    data-parallel rank and size explicitly, or use
    :func:`data_parallel_from_megatron` / :func:`data_parallel_from_mesh`.
    """
    r, s = _int_env("SEQFEED_DP_RANK"), _int_env("SEQFEED_DP_SIZE")
    if (r is None) != (s is None):
        raise SeqfeedError("SEQFEED_DP_RANK and SEQFEED_DP_SIZE must be set together")
    if r is not None:
        return r, s
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    r, s = _int_env("RANK"), _int_env("WORLD_SIZE")
    return (r or 0), (s or 1)


def data_parallel_from_megatron():
    """``(dp_rank, dp_size)`` from Megatron-core's ``parallel_state``
    (after ``initialize_model_parallel``)."""
    from megatron.core import parallel_state

    return (
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(),
    )


def data_parallel_from_mesh(mesh, dim="dp"):
    """``(dp_rank, dp_size)`` from a ``torch.distributed.device_mesh.DeviceMesh``
    and the name of its data-parallel dimension."""
    if isinstance(dim, str):
        names = tuple(mesh.mesh_dim_names or ())
        if dim not in names:
            raise SeqfeedError(f"the device mesh has no dimension {dim!r} (it has {names})")
        dim = names.index(dim)
    return mesh.get_local_rank(dim), mesh.size(dim)
