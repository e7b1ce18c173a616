"""What a replica serves: one loaded anchor-set version per model id, replaced whole when the version changes.

A `LiveSet` is an engine and its batcher (shared by the sets on one base model: shared_sets.py), its /v1/models cards and its `MixContext` (the calibration beside the set is
read here, presets are resolved here, once), built for one resolved version (an alias such as
`s3://bucket/sets/sentiment@prod` is resolved once, to `.../versions/<n>`, so every request a LiveSet answers comes
from that one immutable version). Rolling to a new version builds a new LiveSet beside the old one, swaps it in,
and retires the old one once its in-flight requests have finished: nothing in flight is cut, nothing waits.
No Ray here: the deployment (deployment.py) calls these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from lerpray.mixing import AnchorLayout
from lerpray.serve import protocol
from lerpray.serve.batcher import Batcher, BatchObserver, EngineLike
from lerpray.serve.config import ServeArgs
from lerpray.serve.replies import TokenText
from lerpray.serve.responses import ModelCard
from lerpray.steering import MixContext

__all__ = [
    "LiveSet", "describe_capacity", "kv_capacity", "model_cards", "resolve_version", "retire", "serve_engine",
    "set_args", "start_engine", "start_set",
]

EngineFactory = Callable[[ServeArgs], EngineLike]
T = TypeVar("T")
CALIBRATION_RECHECK_S = 5.0  # how often a set without a usable calibration looks for one in its store
VERSION_HEADER = "x-lerpray-anchor-version"  # the answering set's fingerprint: v<version>-<manifest sha256 prefix>

logger = logging.getLogger(__name__)


@dataclass
class LiveSet:
    args: ServeArgs  # `anchors` is the resolved version's URI
    engine: EngineLike
    batcher: Batcher
    cards: list[ModelCard]
    mixes: MixContext  # what its requests' mixes resolve against: layout, policy, calibration, resolved presets
    tokens: TokenText  # token id -> text, for logprobs
    vocab_size: int | None  # token ids at or above it are refused (logit_bias)
    calibration_checked: float = field(default_factory=time.monotonic)  # when the store was last read for one
    shared: tuple[str, ...] = ()  # the model ids whose sets share its engine and batcher (shared_sets.py); () own

    @property
    def fingerprint(self) -> str:
        return self.cards[0].fingerprint

    def headers(self) -> dict[str, str]:
        return {VERSION_HEADER: self.fingerprint}

    def calibration_due(self, every_s: float = CALIBRATION_RECHECK_S) -> bool:
        """Whether refresh_calibration would read the store now (cheap: the request path asks it first)."""
        return self.mixes.calibration is None and time.monotonic() - self.calibration_checked >= every_s

    def refresh_calibration(self, every_s: float = CALIBRATION_RECHECK_S) -> bool:
        """A set served without a usable calibration looks for one again, at most every `every_s` seconds, so a
        calibration saved beside the set while it is served (`lerpray eval calibrate`, the quickstart) answers the
        next target request without a restart. Blocking store I/O: call it off the event loop. Whether one was found.
        """
        if not self.calibration_due(every_s):
            return False
        from lerpray.anchors import open_set
        from lerpray.anchors.calibration import load_calibration

        self.calibration_checked = time.monotonic()
        calibration = load_calibration(open_set(self.args.anchors))
        if calibration[0] is None and calibration[1] == self.mixes.calibration_problem:
            return False
        self.mixes = protocol.mix_context(self.args, self.mixes.layout, *calibration,
                                          engine_block=self.mixes.engine_block)  # fmt: skip
        logger.info("calibration %s for %s", "loaded" if calibration[0] else "still unusable", self.args.anchors)
        return calibration[0] is not None


def serve_engine(args: ServeArgs) -> EngineLike:
    """The real engine of a replica (lerpray.model.loading.load_engine with the serve config's settings)."""
    from lerpray.model.loading import load_engine

    return load_engine(args.anchors, args.base_model, device=args.device, dtype=args.dtype,
                       max_batch_size=args.max_batch_size, torch_threads=args.torch_threads,
                       **args.kv_engine_kwargs())  # fmt: skip


def start_engine(factory: Callable[[ServeArgs], T], args: ServeArgs) -> T:
    """`factory(args)`, retried with exponential backoff (1 s doubling to 30 s) while the anchor store fails (endpoint
    down, throttled, 5xx) for up to `args.store_retry_s`; then a StoreError saying so, which `serve status` shows
    before Serve starts another replica. Anything else (a corrupt set, no set at the URI) fails at once."""
    from lerpray.anchors import ObjectNotFound, StoreError

    started, delays = time.monotonic(), []
    while True:
        try:
            return factory(args)
        except ObjectNotFound:
            raise
        except StoreError as err:
            delay, waited = min(2.0 ** len(delays), 30.0), time.monotonic() - started
            if waited + delay > args.store_retry_s:
                retried = ", ".join(f"{d:g}" for d in delays) or "no"
                raise StoreError(
                    f"the anchor store still fails after {len(delays) + 1} attempts in {waited:.0f} s (retried after "
                    f"{retried} s): {err}. This replica gives up and Serve starts another; raise store_retry_s to "
                    "wait longer"
                ) from err
            logger.warning("anchor store failed (attempt %d, retrying in %g s): %s", len(delays) + 1, delay, err)
            time.sleep(delay)
            delays.append(delay)


def resolve_version(uri: str) -> str:
    """The URI of the one version `uri` names (an alias or a bare versioned set resolved now); an unversioned set's
    URI as is. Raises AnchorSetError for an alias to a missing or incomplete version."""
    from lerpray.anchors import open_set

    return open_set(uri).uri


def set_args(args: ServeArgs) -> dict[str, ServeArgs]:
    """model id -> the arguments of the set it serves: the main set (with the presets), then each of `args.sets`."""
    extra = {name: args.model_copy(update={"model_name": name, "anchors": uri, "presets": {}, "sets": {}})
             for name, uri in args.sets.items()}
    return {args.model_name: args, **extra}


def start_set(args: ServeArgs, factory: EngineFactory, observer: BatchObserver) -> LiveSet:
    """Resolve, load and check one set (blocking: seconds to minutes), and start its batcher."""
    args, engine, calibration = start_engine(lambda a: _resolve_and_load(a, factory), args)
    mixes = protocol.mix_context(args, engine.layout, *calibration)  # a preset that does not fit fails the load
    kv_cache = kv_capacity(engine)
    logger.info("%s loaded from %s: %s", args.model_name, args.anchors, describe_capacity(kv_cache))
    cards = model_cards(args, engine.layout, engine.context_length, kv_cache)
    batcher = Batcher(engine, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                      retry_after_s=args.retry_after_s, observer=observer)
    batcher.start()
    tokenizer = getattr(engine, "tokenizer", None)  # test engines may have none
    return LiveSet(args, engine, batcher, cards, mixes, TokenText(tokenizer), len(tokenizer) if tokenizer else None)


def _resolve_and_load(args: ServeArgs, factory: EngineFactory) -> tuple[ServeArgs, EngineLike, tuple]:
    """(args naming the resolved version, its engine, its calibration and why it is unusable): all read the store,
    so all are retried by start_engine."""
    from lerpray.anchors import open_set
    from lerpray.anchors.calibration import load_calibration

    resolved = args.model_copy(update={"anchors": resolve_version(args.anchors)})
    engine = factory(resolved)
    calibration = load_calibration(open_set(resolved.anchors))
    if calibration[0] is not None:
        logger.info("calibration loaded for %s: %s", resolved.anchors, ", ".join(calibration[0].curves))
    return resolved, engine, calibration


def kv_capacity(engine: EngineLike) -> dict[str, int] | None:
    """The engine's KV cache as /v1/models shows it: slots, tokens_per_slot (its context length, capped by the
    budget), model_context (what was wanted) and bytes; None for an engine without one (a test's)."""
    nbytes = getattr(engine, "kv_cache_nbytes", None)
    if nbytes is None:
        return None
    return {"slots": engine.max_batch_size, "tokens_per_slot": engine.context_length,
            "model_context": engine.model_context, "bytes": nbytes}


def describe_capacity(kv_cache: dict[str, int] | None) -> str:
    """The startup log's account of the KV cache, e.g. "KV cache 32 slots x 2048 tokens (context 2048 of 8192
    wanted, 1.5 GiB)"."""
    from lerpray.kv_config import format_bytes

    if kv_cache is None:
        return "no KV cache (a test engine)"
    return (f"KV cache {kv_cache['slots']} slots x {kv_cache['tokens_per_slot']} tokens (context "
            f"{kv_cache['tokens_per_slot']} of {kv_cache['model_context']} wanted, {format_bytes(kv_cache['bytes'])})")


def model_cards(args: ServeArgs, layout: AnchorLayout, context_length: int | None,
                kv_cache: dict[str, int] | None = None) -> list[ModelCard]:
    """GET /v1/models' entries: the served id (the anchor set, its attributes and poles, the base model from its
    manifest) and one per preset; `fingerprint` identifies the set's manifest (system_fingerprint of replies)."""
    from lerpray.anchors import MANIFEST_NAME, open_store, read_manifest
    from lerpray.anchors.format import sha256

    store = open_store(args.anchors)
    manifest = read_manifest(store)
    base = manifest.base_model.model_dump(mode="json")
    if args.base_model is not None:
        base["served_from"] = args.base_model
    bounds = args.bounds()
    served = ModelCard(
        id=args.model_name,
        created=int(manifest.created_at.timestamp()),
        base_model=base,
        anchors=list(layout.anchors),
        attributes={a: {"high": p.high, "low": p.low} for a, p in manifest.attributes.items()},
        extrapolation=None if bounds is None else vars(bounds).copy(),
        context_length=context_length,
        kv_cache=kv_cache,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=args.default_max_tokens,
        fingerprint=f"v{manifest.version}-{sha256(store.read_bytes(MANIFEST_NAME))[:12]}",
    )
    presets = [
        served.model_copy(update={"id": name, "parent": args.model_name, "interpolation": preset})
        for name, preset in args.presets.items()
    ]
    return [served, *presets]


async def retire(live: LiveSet, *, poll_s: float = 0.05, timeout_s: float = 600.0) -> None:
    """Close `live`'s batcher once nothing is in flight or waiting in it (new requests already go elsewhere)."""
    deadline = time.monotonic() + timeout_s
    while live.batcher.load() != (0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
    live.batcher.close()
