"""Type stubs of ``seqfeed._native``, the PyO3 extension under ``seqfeed``.

Kept in step with crates/python/src/*.rs; ``python -m mypy.stubtest
seqfeed._native`` (scripts/test.sh) compares them with the built module.
Dicts are typed ``dict[str, Any]``: their keys are listed in each docstring.
"""

import os
from typing import Any, final

from typing_extensions import CapsuleType

__all__ = [
    "SeqfeedError",
    "__version__",
    "NativeLoader",
    "NativeBatch",
    "NativePlan",
    "open_plan",
    "plan_stats",
    "plan_show",
    "inspect_source",
]

_Path = str | os.PathLike[str]

__version__: str

class SeqfeedError(RuntimeError):
    """A seqfeed error; the message is the one the seqfeed CLI prints."""

@final
class NativePlan:
    """A plan opened once with the connection settings of its nodes."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def dataset_fingerprint(self) -> str | None: ...
    def stats(self) -> dict[str, Any]:
        """``plan_stats`` of this plan, with each source's special-token ids and tokenizer."""

@final
class NativeBatch:
    """One micro-batch; exported to torch through DLPack without a copy."""

    @property
    def step(self) -> int: ...
    @property
    def micro(self) -> int: ...
    @property
    def micro_batches(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> str:
        """``"uint16"``, ``"int32"`` (u32 tokens) or ``"int64"`` (widened)."""
    @property
    def sources(self) -> list[str]: ...
    @property
    def positions(self) -> list[int]: ...
    @property
    def filled_directly(self) -> bool: ...
    @property
    def views(self) -> int: ...
    @property
    def num_docs(self) -> int | None:
        """Documents in this micro-batch (``None`` without document boundaries)."""
    @property
    def max_seqlen(self) -> int | None:
        """The longest document, in tokens (``None`` without document boundaries)."""
    def cu_seqlens_dlpack(self) -> Any | None:
        """``cu_seqlens`` (int32, padded) as a DLPack capsule, or ``None``."""
    def document_ids_dlpack(self) -> Any | None:
        """``document_ids`` (int32, ``[micro_batch, row_tokens]``) as a DLPack capsule, or ``None``."""
    def tobytes(self) -> bytes: ...
    def record_stream(self, stream: int) -> None: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __dlpack__(
        self,
        stream: int | None = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> CapsuleType: ...

@final
class NativeLoader:
    """The loader of one data-parallel rank (``seqfeed.Loader`` wraps it)."""

    def __new__(
        cls,
        plan: NativePlan,
        *,
        device: str = "cpu",
        prefetch: int = 2,
        start_step: int = 0,
        start_micro: int = 0,
        end_step: int | None = None,
        dp_rank: int = 0,
        dp_size: int = 1,
        accumulation: int = 1,
        widen: bool = False,
        failover_ms: int = 10000,
        ring_wait_ms: int = 10000,
        client_name: str | None = None,
        split: str = "train",
        verify_crc: bool = False,
        eod_token: int | None = None,
        doc_row_tokens: int | None = None,
    ) -> NativeLoader: ...
    @property
    def split(self) -> str: ...
    def next_batch(self) -> NativeBatch | None: ...
    def position(self) -> tuple[int, int]: ...
    def stats(self) -> dict[str, Any]:
        """Keys: steps, micro_batches, sequences, bytes, stall_s, first_stall_s,
        stall_after_warmup_s, read_time_s, failed_over, crc_mismatches,
        direct_steps, nodes (a list of per-node dicts)."""
    def close(self) -> None: ...
    @property
    def plan_fingerprint(self) -> str: ...
    @property
    def dataset_fingerprint(self) -> str | None: ...
    @property
    def plan_steps(self) -> int: ...
    @property
    def end_step(self) -> int: ...
    @property
    def global_batch(self) -> int: ...
    @property
    def micro_batch(self) -> int: ...
    @property
    def accumulation(self) -> int: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def token_dtype(self) -> str: ...
    @property
    def data_parallel(self) -> tuple[int, int]: ...
    @property
    def sources(self) -> list[str]: ...
    @property
    def widened(self) -> bool: ...

def open_plan(
    plan: _Path,
    *,
    dataset: _Path | None = None,
    shapes: _Path | None = None,
    cluster: _Path | None = None,
    nodes: list[str] | None = None,
    transport: str = "auto",
    secret: str | None = None,
    secret_file: _Path | None = None,
    connections: int = 2,
    io_timeout_ms: int = 10000,
    client_name: str | None = None,
) -> NativePlan: ...
def plan_stats(
    plan: _Path, *, dataset: _Path | None = None, shapes: _Path | None = None
) -> dict[str, Any]:
    """Keys: fingerprint, dataset_fingerprint, mode, global_batch, steps,
    validation_sequences, validation_steps, total_sequences,
    requested_sequences, seq_len, token_bytes, sources (a list of dicts:
    name, weight, target, realized, quota, size, epochs, max_repeats,
    at_max_repeats, max_epochs, per_batch, files, eos, bos, pad, tokenizer,
    n_vocab)."""
def plan_show(
    plan: _Path,
    step: int,
    dp_size: int = 1,
    dp_rank: int | None = None,
    *,
    dataset: _Path | None = None,
    shapes: _Path | None = None,
    split: str = "train",
) -> list[dict[str, Any]]:
    """One dict per row: step, dp_rank, row, position, source, file, index, seq, offset."""
def inspect_source(
    path: _Path, seq: int | None = None, *, index: int | None = None
) -> dict[str, Any]:
    """A source directory: manifest_json, name, dtype, seq_len, sequences,
    files, fingerprint (and seq, tokens with ``seq``). A sequence file: file,
    dtype, seq_len, sequences (and index, tokens with ``index``)."""
