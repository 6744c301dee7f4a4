"""The small interfaces behind each area.  Plugins' factories return objects of these shapes; the host and
the engines call them directly on the hot path.  Mostly typing: only the ``runtime_checkable`` protocols
(optional KV-store extensions) and the declared capabilities are looked at at run time."""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import attrs
import numpy as np

if TYPE_CHECKING:
    from .tree import TreeMask


# -- tokenization ----------------------------------------------------------------------------------------
class IncrementalDecoder(Protocol):
    def feed(self, token_id: int) -> str:
        """Text completed by this token; never half a UTF-8 character."""

    def flush(self) -> str:
        """Whatever is left (invalid trailing bytes become U+FFFD)."""


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    def is_eog(self, token_id: int) -> bool: ...
    def incremental_decoder(self) -> IncrementalDecoder: ...


# -- engines ---------------------------------------------------------------------------------------------
class Session(Protocol):
    """One sequence's state inside a loaded model: the tokens in its KV cache and the means to extend or
    roll them back."""

    n_ctx: int
    n_vocab: int
    tokens: list[int]  # the ids whose K/V are in the cache, in order

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``ids`` to the sequence.  Returns the logits of the last position, shape (n_vocab,), or
        with ``all_logits`` one row per id, shape (len(ids), n_vocab).  Float32."""

    def truncate(self, n_tokens: int) -> None:
        """Roll the sequence back to its first ``n_tokens`` tokens (drops their K/V from the cache)."""


@runtime_checkable
class TreeSession(Protocol):
    """A session that verifies a token tree in one forward (the native engine)."""

    def eval_tree(self, ids: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Evaluate tree nodes ``ids`` after the sequence: ``parents[i]`` is the index of node i's parent (an
        earlier node), -1 for a node that continues the sequence.  Returns every node's logits, shape
        (len(ids), n_vocab), each equal to evaluating its path alone.  The nodes stay provisional until
        :meth:`keep_path`."""

    def keep_path(self, nodes: Sequence[int]) -> None:
        """Keep nodes ``nodes`` (a root-to-node path of the last tree, in order) as the sequence's next
        tokens; the other nodes' K/V are dropped, as if only the path had been evaluated."""


TASKS = ("generate", "embed", "classify")


@attrs.frozen
class EngineCapabilities:
    """What an engine can do, declared by the engine (and repeated on its loaded models); the Runtime asks
    these instead of checking an engine's name."""

    #: the Runtime tasks its loaded models serve (of TASKS)
    tasks: frozenset[str] = attrs.field(converter=frozenset)
    #: loaded models have ``batch_service()`` (:class:`BatchingModel`): concurrent requests share forwards
    continuous_batching: bool = False
    #: a session keeps its cached tokens, so a next prompt with the same prefix re-evaluates only the rest
    prefix_reuse: bool = False
    #: the engine calibrates a :class:`CalibratedKVStore` at load (it evaluates the store's text)
    kv_calibration: bool = False
    #: its batching runner verifies a :class:`BatchSpeculation`'s drafts inside the batched step
    batched_speculation: bool = False

    def serves(self, task: str) -> bool:
        return task in self.tasks


@attrs.frozen
class SupportVerdict:
    """Whether an engine runs a model file on this CPU: why it does, or the first reason it does not."""

    ok: bool
    reason: str


@runtime_checkable
class ModelSupport(Protocol):
    """An engine that tells from a model file's header alone whether it runs that file here.  ``engine="auto"``
    takes the first generation engine (highest priority first) whose verdict is ok; an engine without this
    check is taken to run every file it loads."""

    def check_model(self, model_path: str) -> SupportVerdict: ...


class LoadedModel(Protocol):
    capabilities: EngineCapabilities
    path: str
    n_ctx: int
    n_vocab: int
    tokenizer: Tokenizer
    metadata: dict[str, Any]

    def session(self) -> Session:
        """The model's session (reset to empty)."""

    def close(self) -> None: ...


class BatchingModel(LoadedModel, Protocol):
    """A loaded model with continuous batching (``capabilities.continuous_batching``)."""

    def batch_service(self) -> "BatchService | None":
        """The model's one batching service, created on first use; None when its KV store has room for one
        stream only."""


class BatchService(Protocol):
    peak_streams: int  # most streams decoded in one forward so far

    def generate(self, prompt_ids: Sequence[int], params: "SamplingParams",
                 is_eog: Callable[[int], bool], speculation: "BatchSpeculation | None" = None) -> Iterator[int]:
        """Like :meth:`Decoder.generate`, callable from many threads at once; plain decoding, or with
        ``speculation`` (engines with ``batched_speculation``) the stream's drafts verified in the batch."""


class StreamDrafter(Protocol):
    """One stream's drafts inside continuous batching (made by :meth:`BatchSpeculation.stream`)."""

    def settle(self, rows: np.ndarray) -> tuple[int, int]:
        """The stream's last drafts d1..dk were verified: ``rows`` (k + 1, n_vocab) f32 are the logits after
        its pending token and after each draft.  Returns (drafts accepted, the target's own next token), by
        the lossless rule (greedy: the argmax)."""

    def finish(self) -> None:
        """The stream left the batch (finished or cancelled): settle what it was still learning."""


class BatchSpeculation(Protocol):
    """A speculative decoder's part in continuous batching, kept per loaded model (what it learns outlives
    requests): it makes each stream's drafter and, every step, chooses every stream's drafts knowing the
    rows already in the step, since a row's marginal cost depends on the batch around it."""

    def stream(self, prompt_ids: Sequence[int], params: "SamplingParams",
               rng: np.random.Generator) -> StreamDrafter:
        """A drafter for a new stream (``rng``: its Sampler's, so acceptance draws from the stream's seed)."""

    def draft(self, streams: Sequence[tuple[StreamDrafter, Sequence[int], int]], base_rows: int,
              base_tokens: int) -> list[list[int]]:
        """Each stream's drafts for this step.  ``streams``: (drafter, every token of the stream so far,
        the last one pending, most drafts it may take); ``base_rows`` rows are in the step already and
        yield ``base_tokens`` tokens."""

    def record_step(self, rows: int, seconds: float) -> None:
        """A batched forward of ``rows`` decode and verify rows (every one with its logits) took ``seconds``."""


class BatchingRunner(Protocol):
    """An engine's continuous-batching core, driven by :class:`corert.batch_service.BatchService` on one
    thread: streams join with ``add`` and advance together, one forward per ``step``.  A stream's tokens
    are drawn through :class:`corert.sampling.Sampler` and equal what it produces alone.

    ``step`` raising :class:`corert.errors.InputError` means it finished the one stream at fault (now in
    ``finished``, reason ``"error: ..."``); any other exception leaves every live stream's K/V as it was
    before the step, so the service can cancel them and go on."""

    streams: dict[int, Any]  # live streams by id
    finished: dict[int, Any]  # finished streams by id, until the service takes them out
    steps: int  # forwards run so far

    def add(self, prompt_ids: Sequence[int], params: "SamplingParams",
            is_eog: Callable[[int], bool] | None = None) -> int:
        """A new stream (it joins at the next step); raises InputError for a prompt it cannot serve."""

    def step(self) -> list[tuple[int, int]]:
        """One forward over every live stream; the (stream id, new token) pairs it produced."""

    def cancel(self, sid: int) -> None:
        """Finish a live stream now (reason ``"cancelled"``); its sequence slot is free for the next add."""

    def result(self, sid: int) -> Any:
        """A finished stream (generated ids, finish reason)."""

    @property
    def active(self) -> bool:
        """Whether any stream is live."""


class Engine(Protocol):
    name: str
    capabilities: EngineCapabilities

    def load(self, model_path: str, *, tokenizer: Tokenizer | None, kv_cache: Any, n_ctx: int,
             threads: "ThreadBudget", config: Any) -> LoadedModel: ...


# -- memory ----------------------------------------------------------------------------------------------
@runtime_checkable
class LlamaKV(Protocol):
    """The llama.cpp engine's KV cache: llama.cpp stores K/V itself; the plugin picks its type."""

    def context_params(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama`` (type_k, type_v, flash_attn)."""


class KVStore(Protocol):
    """The native engine's K/V memory for one model: what its attention reads (see plugins/kv_cache).

    A kv_cache plugin's factory returns a provider with ``allocate(n_layers, n_kv_heads, head_dim,
    max_tokens, n_seqs=1) -> KVStore``; the engine calls it once per loaded model.  The store holds up to
    ``n_seqs`` sequences, each up to ``max_tokens`` long; a forward pass carries one (seq id, position) pair
    per row, so rows of several sequences can share one batch (continuous batching).  Arrays: ``seq_ids``
    and ``positions`` int32 (rows,); ``k``, ``v`` f32 (rows, n_kv_heads, head_dim); ``q``, ``out`` f32
    (rows, n_heads, head_dim).  A store may keep K/V in any layout and precision (contiguous f32, 16-token
    pages of q8/f16/f32 with page tables...): only ``write`` and ``attend`` touch them.

    Contract that makes batched verification exact: ``attend``'s result for a row depends only on that
    row's query and its sequence's K/V at positions ``0..positions[i]``, never on the other rows.
    """

    n_layers: int
    n_kv_heads: int
    head_dim: int
    max_tokens: int
    n_seqs: int

    def new_sequence(self) -> int:
        """A free sequence id, its length 0.  Raises :class:`corert.errors.InputError` when none is free."""

    def release(self, seq: int) -> None:
        """Give a sequence's memory back (its id may be handed out again)."""

    def length(self, seq: int) -> int:
        """How many positions of ``seq`` hold K/V."""

    def reserve(self, seq_ids: np.ndarray, positions: np.ndarray) -> None:
        """Make room for these rows before a forward pass (a paged store allocates pages here).  Each
        sequence's positions must continue it: ``length(seq), length(seq)+1, ...``.  Raises
        :class:`corert.errors.InputError` when a sequence would exceed ``max_tokens`` or memory is full."""

    def write(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, k: np.ndarray,
              v: np.ndarray) -> None:
        """Store layer ``layer``'s keys and values of these rows (after RoPE)."""

    def attend(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, q: np.ndarray, scale: float,
               out: np.ndarray, window: int = 0, tree: "TreeMask | None" = None) -> None:
        """Causal attention of layer ``layer``: ``out[i]`` = softmax(q[i] . K * scale) V over positions
        ``0..positions[i]`` of sequence ``seq_ids[i]`` (grouped-query: head h reads KV head
        h // (n_heads / n_kv_heads)).  Rows written by ``write`` in the same pass are visible.  ``window``
        > 0 (a sliding-window layer) reads only the last ``window`` positions, ``positions[i] - window + 1
        .. positions[i]``.  With ``tree`` (:class:`corert.tree.TreeMask`) the rows are token-tree nodes at
        slots ``positions``: row i reads its context and its ancestors' slots only, in path order, exactly as
        a sequential forward of its path would (``window`` counts along that path)."""

    def keep_path(self, seq: int, start: int, slots: Sequence[int], token_ids: Sequence[int] | None = None) -> None:
        """After a token tree's forward: keep the K/V of tree slots ``slots`` (increasing, all >= ``start``)
        at positions ``start, start+1, ...`` and drop every other slot from ``start`` on, leaving the store
        as if only those rows had been written (``token_ids``: their ids, for a store that tracks them)."""

    def truncate(self, seq: int, n_tokens: int) -> None:
        """Roll ``seq`` back to its first ``n_tokens`` positions (speculative decoding's rejected drafts)."""

    def nbytes(self) -> int:
        """Memory held for K/V, in bytes."""


@runtime_checkable
class KVProvider(Protocol):
    """What a kv_cache plugin's factory returns for the native engine: one store per loaded model."""

    def allocate(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 n_seqs: int = 1) -> KVStore: ...


@runtime_checkable
class PrefixMatchingKVStore(Protocol):
    """A store that knows which token ids its pages hold (kv_cache=paged): the engine passes the ids of the
    rows it reserves, so full pages of known tokens become shareable prefix-cache entries, and a sequence
    whose K/V was evicted (or a new one) takes the cached pages of its longest cached prefix."""

    def reserve(self, seq_ids: np.ndarray, positions: np.ndarray, token_ids: np.ndarray | None = None,
                provisional: bool = False, exact: np.ndarray | None = None) -> None:
        """:meth:`KVStore.reserve`, with ``token_ids`` (int, (rows,)) the ids of those rows; ``provisional``
        rows (a token tree) get their ids from ``keep_path``.  ``exact`` (bool, (rows,)): the rows an engine
        with two paths (native amx-bf16: a prompt's rows but its last on bf16 tiles) computes on its exact
        path; their bits differ from the bulk path's, so a page holding one is shared only with a
        ``match_prefix`` that wants those rows exact."""

    def match_prefix(self, seq: int, ids: Sequence[int], exact: Sequence[bool] | None = None) -> int:
        """An empty ``seq`` takes the cached pages of ``ids``' longest cached prefix; returns how many
        positions it now holds (their K/V need no evaluation).  ``exact``: which rows it wants on the
        engine's exact path (a recomputed sequence's own; None: none, as a new prompt's rows)."""


#: store type -> whether it is a PrefixMatchingKVStore
_PREFIX_MATCHING: dict[type, bool] = {}


def prefix_matching(kv: KVStore) -> bool:
    """``isinstance(kv, PrefixMatchingKVStore)``, answered once per store type: the Protocol's check looks up
    each of its methods on the object, ~6 us, and a decode step asked twice."""
    hit = _PREFIX_MATCHING.get(type(kv))
    if hit is None:
        hit = _PREFIX_MATCHING[type(kv)] = isinstance(kv, PrefixMatchingKVStore)
    return hit


def reserve_rows(kv: KVStore, seq_ids: np.ndarray, positions: np.ndarray, token_ids: np.ndarray,
                 provisional: bool = False, exact: np.ndarray | None = None) -> None:
    """Reserve rows in any store: a :class:`PrefixMatchingKVStore` also gets their ``token_ids`` (and
    ``provisional``), a plain :class:`KVStore` only the rows.  The one place that tells the two apart, so the
    engine's session, batch runner and warm-up call stores alike."""
    if prefix_matching(kv):
        kv.reserve(seq_ids, positions, token_ids=token_ids, provisional=provisional, **_paths(exact))
    else:
        kv.reserve(seq_ids, positions)


def match_cached_prefix(kv: PrefixMatchingKVStore, seq: int, ids: Sequence[int],
                        exact: Sequence[bool] | None = None) -> int:
    """``kv.match_prefix``, with ``exact`` (the rows' paths) only when an engine has two paths."""
    return kv.match_prefix(seq, ids, **_paths(exact))


def _paths(exact) -> dict:
    """``exact=`` only from an engine with two paths: a store written before the argument serves every other."""
    return {} if exact is None else {"exact": exact}


@attrs.frozen
class CalibrationRequest:
    """What a store wants evaluated to calibrate itself: the first ``max_tokens`` tokens of ``text``."""

    text: str
    max_tokens: int


@runtime_checkable
class CalibratedKVStore(Protocol):
    """A store whose encoding is fitted to the model (kv_cache=paged:q8 fits its q8 basis per layer).  The
    engine drives it once at load, before any sequence holds K/V::

        request = store.calibration()          # None: nothing to calibrate
        with store.calibrating():
            evaluate tokenize(request.text)[:request.max_tokens] in a scratch sequence, then release it

    The store only sees the K/V the engine writes; it never calls the engine."""

    def calibration(self) -> CalibrationRequest | None: ...

    def calibrating(self) -> contextlib.AbstractContextManager[None]: ...


# -- decoding --------------------------------------------------------------------------------------------
def _bias_pairs(value: Any) -> tuple[tuple[int, float], ...]:
    items = value.items() if hasattr(value, "items") else (value or ())
    return tuple(sorted((int(t), float(b)) for t, b in items))


@attrs.frozen
class SamplingParams:
    """How a request chooses its tokens (the Runtime validates the ranges).  Everything past ``seed`` is a
    logit processor applied by :class:`corert.sampling.Sampler` before it chooses, in this order: logit
    bias, presence/frequency penalties over the generated tokens (OpenAI's definition), the grammar mask;
    logprobs are read from the logits so processed."""

    max_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: (token id, bias added to its logit) pairs; a mapping converts
    logit_bias: tuple[tuple[int, float], ...] = attrs.field(default=(), converter=_bias_pairs)
    #: None: no logprobs; N: the chosen token's logprob and the N most likely alternatives (0..20)
    logprobs: int | None = None
    #: a :class:`corert.constraint.Constraint` (structured output), or None
    constraint: Any = None
    #: receives each chosen token's :class:`corert.sampling.SampledToken` when ``logprobs`` is set (the
    #: generation loop's channel: the Sampler runs inside a decoder or a batcher it does not see)
    report: Callable[[Any], None] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def processes_logits(self) -> bool:
        """True when the Sampler must do more than choose from the raw logits."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias
                    or self.logprobs is not None or self.constraint is not None)


@attrs.frozen
class DecoderContext:
    """What a decoder factory may use of its runtime (never the Runtime itself)."""

    #: the target model, as the request named it (a registry name or a path)
    model: str
    #: ``load_model(name) -> (loaded model, its lock)``: a generation model on the target's engine and
    #: plugins (a draft model); the same object for the same name
    load_model: Callable[[str], tuple[LoadedModel, threading.Lock]] = attrs.field(repr=False)
    #: ``store_path(name)``: where the model store keeps a registered model (pulled or not)
    store_path: Callable[[str], Path] = attrs.field(repr=False)


class Decoder(Protocol):
    """Built once per loaded model and kept as long as it (what it learns outlives a request); one request
    at a time: requests on a loaded model hold its lock."""

    name: str
    #: True when the continuous batcher decodes exactly as this decoder would (plain decoding), so its
    #: requests may join a batch instead
    runs_in_batcher: bool
    #: True when every token it yields was chosen by a :class:`corert.sampling.Sampler` (plain decoding),
    #: so a request's logit processors (penalties, logit_bias, logprobs, a grammar) hold for all of them;
    #: the Runtime refuses such requests on a decoder that accepts drafts without the Sampler
    samples_every_token: bool
    #: its part in continuous batching when it speculates (None: it decodes plainly or keeps its own turn)
    batch_speculation: BatchSpeculation | None

    def generate(self, session: Session, prompt_ids: Sequence[int], params: SamplingParams,
                 is_eog: Callable[[int], bool]) -> Iterator[int]:
        """Evaluate the prompt, then yield generated ids one by one until max_tokens or an end-of-generation
        id (which is yielded too).  The caller may stop iterating at any time (a stop string)."""

    def stats(self) -> dict[str, Any]:
        """Statistics of the last generate() (speculative: drafted, accepted...)."""


# -- scheduling ------------------------------------------------------------------------------------------
@attrs.frozen
class ThreadBudget:
    """How many threads each pool may use, so their sum never exceeds the cores."""

    cores: int
    llama_threads: int
    llama_batch_threads: int
    ort_intra_op: int
    ort_inter_op: int
    ort_spinning: bool
    numba_threads: int


PRIORITIES = ("interactive", "normal", "batch")


class Scheduler(Protocol):
    name: str

    def submit(self, fn: Callable[..., Any], *args: Any, priority: str = "normal",
               timeout: float | None = None, **kwargs: Any) -> Future: ...
    def thread_budget(self) -> ThreadBudget: ...
    def stats(self) -> dict[str, Any]: ...
    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop taking tasks; with ``cancel_pending`` also cancel queued tasks and ask running ones to stop
        (their cancel token), as the Runtime does when it closes."""
