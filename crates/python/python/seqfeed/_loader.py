"""``seqfeed.Loader``: a rank's micro-batches as torch tensors."""

import operator
import os
import threading
from typing import Optional

import torch
import torch.utils.dlpack

from . import _native
from ._labels import loss_mask_and_position_ids
from ._native import SeqfeedError
from ._parallel import data_parallel_from_env

_from_capsule = torch.utils.dlpack.from_dlpack
_DTYPES = {"int64": torch.int64, "int32": torch.int32, "uint16": torch.uint16}
_STATE_VERSION = 1

# One opened plan per process and argument set: train and validation
# loaders (and every re-created loader) share it instead of opening the
# dataset or asking the storage nodes again.
_PLANS = {}
_PLANS_LOCK = threading.Lock()


def _stamp(path):
    """A file's identity for the plan cache: its path, size and mtime."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (os.path.abspath(path), None)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _open_plan(plan, *, dataset, shapes, cluster, nodes, transport, secret, secret_file,
               connections, io_timeout_ms):
    """The plan opened once per process for these arguments (a
    ``_native.NativePlan``): against the dataset, the shapes file, or the
    manifests the storage nodes publish."""
    key = (
        _stamp(plan), _stamp(dataset), _stamp(shapes), _stamp(cluster),
        tuple(nodes) if nodes is not None else None, transport, secret,
        _stamp(secret_file), connections, io_timeout_ms,
    )
    with _PLANS_LOCK:
        opened = _PLANS.get(key)
        if opened is None:
            opened = _native.open_plan(
                plan, dataset=dataset, shapes=shapes, cluster=cluster, nodes=nodes,
                transport=transport, secret=secret, secret_file=secret_file,
                connections=connections, io_timeout_ms=io_timeout_ms,
            )
            _PLANS[key] = opened
        return opened


def _cuda_device(device):
    """``cuda`` without an index means this process's GPU: torch's current
    device, or ``LOCAL_RANK`` under a launcher when the current device was
    never set (torchrun starts every rank on device 0)."""
    if device.type != "cuda" or device.index is not None:
        return device
    index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    local = os.environ.get("LOCAL_RANK")
    if index == 0 and local is not None:
        try:
            index = int(local)
        except ValueError:
            raise SeqfeedError(f"LOCAL_RANK={local!r} is not an integer") from None
    return torch.device("cuda", index)


def _default_eod(info):
    """The EOD id the plan's sources recorded (``seqfeed pack`` writes the
    EOS it appended into each manifest); ``None`` when none recorded one.
    Sources that disagree are refused, naming them."""
    found = {(s["name"], s["eos"]) for s in info["sources"]}
    ids = {eos for _, eos in found}
    if len(ids) == 1:
        return ids.pop()
    named = ", ".join(
        f"{name}: {eos if eos is not None else 'none recorded'}" for name, eos in sorted(found)
    )
    raise SeqfeedError(
        f"the plan's sources record different EOS ids ({named}); pass eod_token=ID to choose "
        "one, or eod_token=False for no document boundaries"
    )


def _check_eod(info, eod):
    """Refuses an EOD id outside a source's vocabulary or token type."""
    top = (1 << (8 * info["token_bytes"])) - 1
    if not 0 <= eod <= top:
        raise SeqfeedError(
            f"eod_token {eod} does not fit the dataset's {8 * info['token_bytes']}-bit token ids"
        )
    for s in info["sources"]:
        if s["n_vocab"] is not None and eod >= s["n_vocab"]:
            raise SeqfeedError(
                f"eod_token {eod} is outside the vocabulary of source {s['name']!r}: it was packed "
                f"with {s['tokenizer']} (n_vocab {s['n_vocab']}, ids 0..{s['n_vocab'] - 1}); "
                f"its recorded EOS is {s['eos']}"
            )


class Batch:
    """One micro-batch.

    * ``tokens``: ``[micro_batch, seq_len]`` tensor on the loader's device,
      the rows as stored (``L + 1`` tokens with ``labels=True``), zero-copy
      from the step buffer unless a dtype change was asked for.
    * ``input_ids`` / ``labels``: with ``labels=True`` (data packed at L+1
      tokens per sequence) ``input_ids`` is the view ``tokens[:, :-1]`` (the
      L inputs) and ``labels`` a separate tensor holding ``tokens[:, 1:]``
      (the next token of each input, already shifted: Megatron's labels), so
      writing into ``labels`` (``labels[mask] = -100``) never changes
      ``input_ids``. Otherwise ``input_ids`` is ``tokens`` and ``labels`` is
      ``None``.
    * ``loss_mask`` / ``position_ids``: when the loader has an ``eod_token``
      (Megatron's ``eod_mask_loss`` / ``reset_position_ids``), else ``None``.
      ``loss_mask[:, i]`` weighs the prediction of ``labels[:, i]``.
    * ``cu_seqlens`` / ``max_seqlen`` / ``num_docs`` / ``document_ids``:
      the micro-batch's document boundaries, when the loader has
      ``document_boundaries`` (on by default with an ``eod_token``), else
      ``None``. The EOD token ends its document and the token after it
      starts the next (Megatron's rule); each row is independent (a
      document cut by the end of a row ends there) and covers the
      ``input_ids`` (L tokens with ``labels=True``). ``cu_seqlens`` (int32,
      on the batch's device) holds the document offsets in the flattened
      ``[micro_batch * L]`` order with the fixed capacity
      ``micro_batch * L + 1``, padded by repeating the last offset
      (zero-length documents, as flash-attention varlen users pad);
      ``cu_seqlens[:num_docs + 1]`` is the valid part. ``max_seqlen`` and
      ``num_docs`` are Python ints; ``document_ids`` (int32,
      ``[micro_batch, L]``) numbers each token's document within its row
      from 0. The reader thread computes them on the host ahead of the
      consumer (from the host copy of the step; a step the NICs wrote into
      GPU memory is copied back on the reader thread first); on CUDA the
      two tensors are copied to the device through pinned memory on the
      current stream (``non_blocking``), so the training thread never
      waits for the GPU.
    * ``step``, ``micro`` (index within the step), ``sources`` (each row's
      source), ``positions`` (each row's position in the plan's order).

    ``as_dict(format="hf")`` and ``as_dict(format="megatron")`` give the
    batch in the layout each framework's model or training step takes.

    The step's buffer goes back to the loader when every tensor made from
    it is freed (on CUDA, after the consumer's stream has finished with it).
    """

    __slots__ = (
        "tokens",
        "input_ids",
        "labels",
        "loss_mask",
        "position_ids",
        "cu_seqlens",
        "max_seqlen",
        "num_docs",
        "document_ids",
        "step",
        "micro",
        "native",
    )
    # For type checkers (the package ships py.typed); the values live in the slots.
    tokens: torch.Tensor
    input_ids: torch.Tensor
    labels: Optional[torch.Tensor]
    loss_mask: Optional[torch.Tensor]
    position_ids: Optional[torch.Tensor]
    step: int
    micro: int
    native: _native.NativeBatch

    @property
    def sources(self):
        """Each row's source name."""
        return self.native.sources

    @property
    def positions(self):
        """Each row's position in the plan's global order."""
        return self.native.positions

    def as_dict(self, format, packed=False):
        """The batch as the keyword arguments of a model or training step.

        * ``format="hf"`` (Hugging Face ``*ForCausalLM``, ``model(**batch)``):
          ``input_ids`` (the L inputs) and ``labels``, an *unshifted* int64
          copy of ``input_ids`` (the model shifts it once, inside its loss)
          with -100 where no loss applies: at ``labels[:, j]`` when
          ``loss_mask[:, j - 1]`` is 0 (the token after an EOD, with
          ``eod_mask_loss``). ``position_ids`` too when the loader has an
          ``eod_token``. No ``attention_mask``: rows are never padded.
          Because the model shifts, each row has L - 1 targets: the last
          token of an L+1 row is never predicted (the Megatron format
          predicts all L).
        * ``format="megatron"`` (Megatron-core's ``get_batch`` keys, needs
          ``labels=True``): ``tokens`` (the L inputs, ``input_ids``),
          ``labels`` (shifted: ``tokens[:, 1:]`` of the stored row),
          ``loss_mask`` (float32; all ones without an ``eod_token``) and
          ``position_ids`` (int64; ``0..L-1`` without an ``eod_token``). No
          attention mask (as with ``create_attention_mask=False``).

        With ``packed=True`` (needs document boundaries) attention stays
        within each document:

        * ``"hf"`` adds transformers' flash-attention varlen kwargs
          ``cu_seq_lens_q`` and ``cu_seq_lens_k`` (``cu_seqlens``, padded to
          its fixed capacity) and ``max_length_q`` / ``max_length_k``
          (``max_seqlen``, an int), and ``position_ids`` restart at 0 at
          each document (with or without ``reset_position_ids``).
          Transformers' flash-attention paths flatten the batch to the
          same ``[micro_batch * L]`` order; other attention
          implementations ignore these kwargs.
        * ``"megatron"`` flattens ``tokens``, ``labels``, ``loss_mask`` and
          ``position_ids`` (restarting at each document) to
          ``[1, micro_batch * L]`` and adds ``packed_seq_params``, a
          megatron-core ``PackedSeqParams(qkv_format="thd", ...)`` with the
          valid ``cu_seqlens[:num_docs + 1]`` for queries and keys and
          ``max_seqlen``, what ``GPTModel.forward(...,
          packed_seq_params=...)`` takes.

        Step and micro-batch are not in the dict (a model would refuse
        them): they are ``batch.step`` / ``batch.micro``.
        """
        if packed and self.cu_seqlens is None:
            raise SeqfeedError(
                "as_dict(packed=True) needs document boundaries, and this loader computes none: "
                "give it an eod_token (document_boundaries is on by default with one) and do not "
                "pass document_boundaries=False"
            )
        if format == "hf":
            ids = self.input_ids
            labels = ids.to(torch.int64, copy=True)
            if self.loss_mask is not None and labels.shape[1] > 1:
                labels[:, 1:].masked_fill_(self.loss_mask[:, :-1] == 0, -100)
            d = {"input_ids": ids, "labels": labels}
            if packed:
                d["position_ids"] = self._document_positions()
                d["cu_seq_lens_q"] = d["cu_seq_lens_k"] = self.cu_seqlens
                d["max_length_q"] = d["max_length_k"] = self.max_seqlen
            elif self.position_ids is not None:
                d["position_ids"] = self.position_ids
            return d
        if format == "megatron":
            if self.labels is None:
                raise SeqfeedError(
                    'format="megatron" needs labels=True (data packed at L+1 tokens per sequence): '
                    "Megatron's tokens and labels are the L inputs and their next tokens"
                )
            ids = self.input_ids
            b, s = ids.shape
            loss_mask, position_ids = self.loss_mask, self.position_ids
            if loss_mask is None:
                loss_mask = torch.ones((b, s), dtype=torch.float32, device=ids.device)
                position_ids = torch.arange(s, dtype=torch.int64, device=ids.device).expand(b, s).clone()
            d = {"tokens": ids, "labels": self.labels, "loss_mask": loss_mask, "position_ids": position_ids}
            if packed:
                try:
                    from megatron.core.packed_seq_params import PackedSeqParams
                except ImportError as e:
                    raise SeqfeedError(
                        f'as_dict(format="megatron", packed=True) needs megatron-core ({e})'
                    ) from None
                d["position_ids"] = self._document_positions()
                d = {k: v.reshape(1, b * s) for k, v in d.items()}
                cu = self.cu_seqlens[: self.num_docs + 1]
                d["packed_seq_params"] = PackedSeqParams(
                    qkv_format="thd",
                    cu_seqlens_q=cu,
                    cu_seqlens_kv=cu,
                    max_seqlen_q=self.max_seqlen,
                    max_seqlen_kv=self.max_seqlen,
                )
            return d
        raise ValueError(f"format {format!r}: expected 'hf' or 'megatron'")

    def _document_positions(self):
        """int64 position ids restarting at 0 at each document: the token's
        index minus its document's first index, from ``document_ids`` with
        device ops only (no host synchronization)."""
        ids = self.document_ids.to(torch.int64)
        b, s = ids.shape
        idx = torch.arange(s, dtype=torch.int64, device=ids.device).expand(b, s)
        starts = torch.zeros((b, s), dtype=torch.int64, device=ids.device)
        if s > 1:
            new = ids[:, 1:] != ids[:, :-1]
            starts[:, 1:] = torch.where(new, idx[:, 1:], torch.zeros_like(idx[:, 1:]))
        return idx - torch.cummax(starts, dim=1).values

    def __repr__(self):
        return (
            f"seqfeed.Batch(step={self.step}, micro={self.micro}, "
            f"tokens={tuple(self.tokens.shape)} {self.tokens.dtype} on {self.tokens.device})"
        )


class Loader:
    """The seqfeed loader of one data-parallel rank.

    Args:
        plan: plan config (TOML) path.
        dataset: dataset directory: the plan's shapes and fingerprint, and
            the data itself for the local transport. Not needed on a
            trainer host: without ``dataset`` and ``shapes`` the plan is
            opened from the manifests the storage nodes publish (so a
            trainer needs only the plan config and the cluster file).
        shapes: a shapes file (``seqfeed plan shapes``) instead of asking
            the nodes (remote data only).
        cluster: cluster file (nodes, addresses, the files each holds).
            The plan is opened once per process for the same files and
            settings, however many loaders (train, validation) use it.
        nodes: instead of a cluster file, ``["host:port", ...]`` or
            ``["name=host:port", ...]``, each node holding every file.
            With neither, the dataset is read on this host (local transport).
        transport: ``"auto"``, ``"tcp"``, ``"verbs"`` or ``"local"``.
        device: ``"cpu"``, ``"cuda:N"``, or ``"cuda"``: this process's GPU,
            torch's current device, or ``LOCAL_RANK`` when the current
            device is still 0 (a launcher that never called
            ``torch.cuda.set_device``).
        prefetch: steps read ahead of the consumer (at least 1; the ring
            holds ``prefetch + 1`` steps).
        secret: the nodes' shared secret (default ``SEQFEED_SECRET``). It never
            crosses the network: the handshake is a challenge-response.
        secret_file: a file holding the shared secret instead (default
            ``SEQFEED_SECRET_FILE``); one trailing newline is stripped and a
            file every user may read is refused.
        start_step: first step (a ``load_state_dict`` overrides it).
        end_step: one past the last step (default: the plan's end).
        dp_rank, dp_size: this process's data-parallel rank and size
            (default: ``data_parallel_from_env()``, which refuses to guess in
            a job of several ranks). Tensor-, context- and pipeline-parallel
            peers pass the same ``dp_rank`` and get identical batches.
        micro_batch: rows per micro-batch; the step's block of
            ``global_batch / dp_size`` rows is yielded as
            ``global_batch / (dp_size * micro_batch)`` micro-batches in order
            (gradient accumulation). Default: the whole block.
        dtype: ``"int64"`` (what embeddings take; widened on the device),
            ``"int32"``, ``"uint16"`` or ``"native"`` (no conversion: uint16
            or int32 for 32-bit ids, zero-copy).
        labels: the data is packed at L+1 tokens per sequence; batches carry
            ``input_ids = tokens[:, :-1]`` and ``labels = tokens[:, 1:]``.
        eod_token: the EOD id; enables ``loss_mask`` and ``position_ids``.
            Default: the EOS id ``seqfeed pack`` recorded in the sources'
            manifests (``loader.eod_token`` tells which); sources that
            record different ids are refused unless one is given here, and
            ``False`` turns document boundaries off. An id outside a
            source's vocabulary is refused.
        eod_mask_loss, reset_position_ids: as Megatron's options of the
            same names; with no EOD id known they raise.
        document_boundaries: compute each micro-batch's ``cu_seqlens``,
            ``max_seqlen``, ``num_docs`` and ``document_ids`` (see
            ``Batch``) on the reader thread. Default (``None``): on when the
            loader has an ``eod_token``; ``True`` without one raises;
            ``False``: off.
        connections, io_timeout_ms, failover_ms, ring_wait_ms: network and
            fail-over bounds (see ``seqfeed read --help``).
        verify_crc: check every sequence read against its file's CRC32C
            table (default False: it costs 20-33% of tcp read throughput); a
            mismatch is read again from a replica, and with none left the
            loader raises naming the node, file and sequence.
        split: ``"train"`` (default) or ``"validation"``: the held-out
            sequences of the plan's ``[split]`` (docs/PLAN.md "Splits"),
            sources in config order, each one's held-out sequences in index
            order, never in the training stream. Steps are full global
            batches: ``plan_stats(...)["validation_steps"]`` of them; the last
            ``validation_sequences % global_batch`` held-out sequences are not
            served (hold out a multiple of the global batch with
            ``holdout_sequences`` to serve all). Positions
            (``Batch.positions``) are positions in the validation stream, as
            ``plan_show(..., split="validation")`` shows them. A plan that
            holds nothing out (or less than one global batch) is refused.

    Attributes: ``micro_batch`` (rows per micro-batch), ``accumulation``
    (micro-batches per step: ``global_batch / (dp_size * micro_batch)``, the
    gradient-accumulation count), ``dp_rank``, ``dp_size``, ``split``,
    ``position``, ``plan_info``, ``eod_token`` and ``document_boundaries``. ``len(loader)`` is the number of
    *micro-batches* left to yield (``steps * accumulation`` for a fresh
    loader), not the number of steps.

    Iteration: the loader is its own iterator. ``iter()`` continues from the
    current position: a loop broken off early continues where it stopped.
    Once a *training* loader has reached its end, a new loop yields nothing
    (the run is over; ``len(loader) == 0``). A *validation* loader that has
    reached its end starts its stream over (from ``start_step``) on the next
    ``iter()``, so evaluating every N steps reads the whole validation
    stream each time.

    Example (evaluate on the held-out part every 1000 steps)::

        train = seqfeed.Loader("plan.toml", cluster="cluster.toml")
        val = seqfeed.Loader("plan.toml", cluster="cluster.toml", split="validation")
        for batch in train:
            ...
            if batch.step % 1000 == 999 and batch.micro == train.accumulation - 1:
                for vb in val:    # the whole validation stream, every time
                    ...

    Raises ``seqfeed.SeqfeedError`` with the CLI's message for an
    unreachable node, a wrong secret, a plan or data mismatch, or a rank out
    of range.
    """

    def __init__(
        self,
        plan,
        *,
        dataset=None,
        shapes=None,
        cluster=None,
        nodes=None,
        transport="auto",
        device="cpu",
        prefetch=2,
        secret=None,
        secret_file=None,
        start_step=0,
        end_step=None,
        dp_rank=None,
        dp_size=None,
        micro_batch=None,
        dtype="int64",
        labels=False,
        eod_token=None,
        eod_mask_loss=False,
        reset_position_ids=False,
        document_boundaries=None,
        connections=2,
        io_timeout_ms=10_000,
        failover_ms=10_000,
        ring_wait_ms=10_000,
        split="train",
        verify_crc=False,
    ):
        if split not in ("train", "validation"):
            raise ValueError(f"split {split!r}: expected 'train' or 'validation'")
        if (dp_rank is None) != (dp_size is None):
            raise SeqfeedError("give dp_rank and dp_size together (or neither)")
        if dp_rank is None:
            dp_rank, dp_size = data_parallel_from_env()
        try:
            prefetch = operator.index(prefetch)
        except TypeError:
            raise ValueError(f"prefetch {prefetch!r}: expected an integer >= 1") from None
        if prefetch < 1:
            raise SeqfeedError(
                f"invalid loader configuration: prefetch {prefetch}: need at least 1. The ring holds "
                "prefetch + 1 steps, and a loop that still holds the current batch while asking for "
                "the next needs two"
            )
        if dtype != "native" and dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of int64, int32, uint16, native")
        if isinstance(device, torch.device):
            device = str(device)
        self._device = torch.device(device)
        if self._device.type == "cuda":
            self._device = _cuda_device(self._device)
        secret = secret if secret is not None else os.environ.get("SEQFEED_SECRET")
        secret_file = _path(
            secret_file if secret_file is not None else os.environ.get("SEQFEED_SECRET_FILE")
        )
        self._plan = _open_plan(
            os.fspath(plan), dataset=_path(dataset), shapes=_path(shapes), cluster=_path(cluster),
            nodes=nodes, transport=transport, secret=secret, secret_file=secret_file,
            connections=connections, io_timeout_ms=io_timeout_ms,
        )
        self._info = self._plan.stats()
        if not 0 <= dp_rank < dp_size:
            raise SeqfeedError(
                "invalid loader configuration: "
                f"data-parallel rank {dp_rank} is out of range for data-parallel size {dp_size}"
            )
        self.split = split
        if split == "validation":
            v = self._info["validation_sequences"]
            if self._info["validation_steps"] == 0:
                raise SeqfeedError(
                    "the plan holds out no sequences, so it has no validation stream: set [split] holdout or holdout_sequences"
                    if v == 0
                    else f"the validation stream has {v} sequences, less than one global batch ({self._info['global_batch']}): hold out more"
                )
        gb = self._info["global_batch"]
        if gb % dp_size:
            raise SeqfeedError(
                f"invalid loader configuration: data-parallel size {dp_size} does not divide the global batch {gb}"
            )
        block = gb // dp_size
        micro_batch = block if micro_batch is None else int(micro_batch)
        if micro_batch <= 0 or block % micro_batch:
            raise SeqfeedError(
                f"invalid loader configuration: micro_batch {micro_batch} does not divide the "
                f"{block} rows each data-parallel rank reads per step (global_batch {gb} / dp_size {dp_size})"
            )
        if labels and self._info["seq_len"] < 2:
            raise SeqfeedError("labels=True needs sequences of at least 2 tokens (pack at L+1)")
        self._dtype = dtype
        self._labels = bool(labels)
        if eod_token is None:
            eod_token = _default_eod(self._info)
        elif eod_token is False:
            eod_token = None
        if eod_token is not None:
            eod_token = int(eod_token)
            _check_eod(self._info, eod_token)
        elif eod_mask_loss or reset_position_ids:
            raise SeqfeedError(
                "eod_mask_loss and reset_position_ids need the EOD id, and the plan's sources "
                "record none (packed without --eos / a tokenizer): pass eod_token=ID"
            )
        self.eod_token = eod_token
        self._eod = eod_token
        self._eod_mask_loss = bool(eod_mask_loss)
        self._reset_position_ids = bool(reset_position_ids)
        if document_boundaries is None:
            document_boundaries = eod_token is not None
        elif document_boundaries and eod_token is None:
            raise SeqfeedError(
                "document_boundaries=True needs the EOD id, and the loader has none: pass eod_token=ID"
            )
        self.document_boundaries = bool(document_boundaries)
        self._opts = dict(
            device=str(self._device) if self._device.type == "cuda" else "cpu",
            prefetch=int(prefetch),
            end_step=end_step,
            dp_rank=int(dp_rank),
            dp_size=int(dp_size),
            accumulation=block // micro_batch,
            # int64 is widened by the reader thread (CPU) or on the GPU, ahead
            # of the consumer; the tensor is then still zero-copy.
            widen=dtype == "int64",
            failover_ms=failover_ms,
            ring_wait_ms=ring_wait_ms,
            split=split,
            verify_crc=bool(verify_crc),
        )
        if self.document_boundaries:
            # Over the model's inputs: the first L tokens of L + 1 rows.
            self._opts["eod_token"] = eod_token
            self._opts["doc_row_tokens"] = self._info["seq_len"] - (1 if self._labels else 0)
        self.micro_batch = micro_batch
        self.accumulation = block // micro_batch
        self.dp_rank, self.dp_size = int(dp_rank), int(dp_size)
        self._position = (int(start_step), 0)
        self._start_step = int(start_step)
        self._native = None
        # Connect now: an unreachable node or a wrong secret raises here,
        # where the Loader is built, not at the first batch.
        self._start()

    # -- iteration -------------------------------------------------------

    def _start(self):
        step, micro = self._position
        self._native = _native.NativeLoader(
            self._plan, start_step=step, start_micro=micro, **self._opts
        )

    def __iter__(self):
        """Continues from the current position; an exhausted validation
        loader starts its stream over (see the class documentation)."""
        if self.split == "validation" and len(self) == 0:
            self.close()
            self._position = (self._start_step, 0)
        return self

    def __next__(self):
        if self._native is None:
            self._start()
        try:
            nb = self._native.next_batch()
        except KeyboardInterrupt:
            # Ctrl-C: stop the reader threads before unwinding.
            self.close()
            raise
        if nb is None:
            raise StopIteration
        step, micro = nb.step, nb.micro
        self._position = (step, micro + 1) if micro + 1 < self.accumulation else (step + 1, 0)
        return self._wrap(nb, step, micro)

    def _wrap(self, nb, step, micro):
        # The capsule is taken directly (what torch.from_dlpack does through
        # the protocol, minus its per-call dispatch). On CUDA the consumer's
        # stream is the current one, passed as DLPack defines it (1 = the
        # legacy default stream).
        if self._device.type == "cuda":
            s = torch.cuda.current_stream(self._device).cuda_stream
            capsule = nb.__dlpack__(stream=s if s != 0 else 1)
        else:
            capsule = nb.__dlpack__()
        tokens = _from_capsule(capsule)
        want = self._dtype
        if want != "native" and tokens.dtype != _DTYPES[want]:
            tokens = tokens.to(_DTYPES[want])
        b = Batch()
        b.tokens = tokens
        b.step, b.micro = step, micro
        b.native = nb
        if self._labels:
            # labels get their own memory: a consumer that masks them in
            # place (labels[mask] = -100) must not write into input_ids.
            b.input_ids, b.labels = tokens[:, :-1], tokens[:, 1:].clone()
        else:
            b.input_ids, b.labels = tokens, None
        if self._eod is not None:
            b.loss_mask, b.position_ids = loss_mask_and_position_ids(
                b.input_ids, self._eod, self._eod_mask_loss, self._reset_position_ids
            )
        else:
            b.loss_mask = b.position_ids = None
        if self.document_boundaries:
            cu = _from_capsule(nb.cu_seqlens_dlpack())
            doc = _from_capsule(nb.document_ids_dlpack())
            if self._device.type == "cuda":
                # Pinned staging (torch's host allocator keeps the block
                # until the copy has run): an asynchronous copy on the
                # current stream, no wait for the GPU.
                cu = cu.pin_memory().to(self._device, non_blocking=True)
                doc = doc.pin_memory().to(self._device, non_blocking=True)
            b.cu_seqlens, b.document_ids = cu, doc
            b.max_seqlen, b.num_docs = nb.max_seqlen, nb.num_docs
        else:
            b.cu_seqlens = b.max_seqlen = b.num_docs = b.document_ids = None
        return b

    # -- state -----------------------------------------------------------

    def state_dict(self):
        """The position of the next micro-batch and what it is a position in."""
        step, micro = self._position
        return {
            "version": _STATE_VERSION,
            "step": step,
            "micro": micro,
            "plan_fingerprint": self._info["fingerprint"],
            "dataset_fingerprint": self._info["dataset_fingerprint"],
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "micro_batch": self.micro_batch,
            "global_batch": self._info["global_batch"],
            "split": self.split,
        }

    def load_state_dict(self, state):
        """Continues from ``state`` (from ``state_dict``).

        A state of another plan, other data, another split or a newer state
        version is refused. A state saved at a step boundary (``micro == 0``)
        loads into a loader with another ``dp_size`` or ``micro_batch`` (the
        global batch is the plan's, so the step means the same rows): a job
        can resume on fewer or more nodes. A state saved inside a step
        (``micro > 0``) needs the same ``dp_size`` and ``micro_batch``, since
        the micro-batch index only means the same rows in the same layout.
        """
        for key in ("step", "micro", "plan_fingerprint"):
            if key not in state:
                raise SeqfeedError(f"loader state: missing {key!r}")
        version = state.get("version", 1)  # states are version 1 from the start
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _STATE_VERSION:
            raise SeqfeedError(
                f"loader state version {version!r}: this seqfeed reads state versions 1 to "
                f"{_STATE_VERSION} (a state written by a newer seqfeed? upgrade seqfeed to load it)"
            )
        if state["plan_fingerprint"] != self._info["fingerprint"]:
            raise SeqfeedError(
                f"loader state is for plan {state['plan_fingerprint']}, but this loader's plan is "
                f"{self._info['fingerprint']}: the plan config or the data changed"
            )
        have = self._info["dataset_fingerprint"]
        got = state.get("dataset_fingerprint")
        if got and have and got != have:
            raise SeqfeedError(
                f"loader state is for dataset fingerprint {got}, but the dataset has {have}"
            )
        gb = state.get("global_batch")
        if gb is not None and gb != self._info["global_batch"]:
            raise SeqfeedError(
                f"loader state has global_batch={gb} but this loader's plan has "
                f"global_batch={self._info['global_batch']}; a step only means the same rows with the same global batch"
            )
        changed = [
            f"{key}={state[key]} (this loader: {mine})"
            for key, mine in (("dp_size", self.dp_size), ("micro_batch", self.micro_batch))
            if key in state and state[key] != mine
        ]
        if changed and int(state["micro"]) != 0:
            raise SeqfeedError(
                f"loader state was saved inside step {state['step']} (after micro-batch "
                f"{int(state['micro']) - 1}) with {', '.join(changed)}: a position inside a step is "
                "only the same with the same dp_size and micro_batch. Resume with the saved layout, "
                "or from a state saved at a step boundary (micro 0), which loads into any layout "
                "with the same global batch"
            )
        # States from before splits existed are training states.
        got_split = state.get("split", "train")
        if got_split != self.split:
            raise SeqfeedError(
                f"loader state is a position in the {got_split!r} stream, but this loader reads "
                f"split={self.split!r}"
            )
        self.close()
        self._position = (int(state["step"]), int(state["micro"]))

    # -- information -----------------------------------------------------

    def stats(self):
        """Running totals: steps, micro_batches, sequences, bytes, stall and
        read times (seconds), rows failed over to replicas, CRC mismatches,
        and ``nodes``: one dict per storage node (name, live, bytes, reads,
        batches, errors by kind, failed_over, reconnects, crc_mismatches,
        last_crc_mismatch, given_up, latency_p50_s/p99_s/mean_s)."""
        if self._native is None:
            return {}
        return self._native.stats()

    @property
    def plan_info(self):
        """The plan's statistics (``seqfeed.plan_stats``)."""
        return self._info

    @property
    def position(self):
        """``(step, micro)`` of the next micro-batch."""
        return self._position

    def close(self):
        """Stops the reader threads and closes node connections (with the
        GIL released while a node times out). Iterating again continues
        from the current position."""
        if self._native is not None:
            self._native.close()
            self._native = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        """Micro-batches left to yield (not steps): ``(end_step - step) *
        accumulation - micro``. For a validation loader that has reached
        its end, 0 until ``iter()`` starts it over."""
        end = self._opts["end_step"]
        steps = self._info["validation_steps" if self.split == "validation" else "steps"]
        end = steps if end is None else min(end, steps)
        step, micro = self._position
        return max(0, (end - step) * self.accumulation - micro)

    def __getstate__(self):
        raise TypeError(
            "a seqfeed.Loader cannot be pickled or sent to a worker process; "
            "use seqfeed.SeqfeedDataset with num_workers=0"
        )


def _path(p):
    return None if p is None else os.fspath(p)
