"""The engines of a multiplexed set replica: ONE engine per base model, shared by every set Ray Serve loads here.

Ray Serve's multiplexing (lerpray.serve.multiplexed) loads and unloads sets one by one on a replica. The first set on
a base model (its manifest's base identity, and the config's `base_model` override) loads that base once, as a
PagedEngine (lerpray.model.paged_engine) whose anchor pool holds the replica's sets; every later set on the same
base is only read from the store and registered with the pool (paged in on first use, as any paged set), so a
replica holds one copy of the base weights whatever the number of sets. The pool is sized when the base loads:
`anchor_capacity` anchors if given, else room for `max_sets_per_replica` of the largest configured set on that
base; its rank columns and layers are the largest and the union over the configured sets on that base (their
manifests). A set that can never be resident in it (more anchors or a higher rank than reserved) fails to load (503).

A set on another base model gets an engine of its own over that base (the same way, shared with the sets on its
base). Unloading a set (`release`) waits for its requests, removes it from the pool, and closes the engine once its
last set is gone, freeing the base. Each set keeps its own LiveSet (cards, calibration, MixContext naming the set),
all sharing the base's engine and batcher, so rows of different sets share a forward pass. No Ray here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lerpray.serve import live, protocol
from lerpray.serve.batcher import Batcher, BatchObserver
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import LiveSet
from lerpray.serve.replies import TokenText

__all__ = ["PoolFactory", "ReplicaBases", "SetRefused", "serve_pool_engine"]

# (args of the first set, {set id: URI}, anchor capacity, max rank, target modules) -> a PagedEngine
PoolFactory = Callable[[ServeArgs, dict[str, str], int, int, tuple[str, ...]], object]

logger = logging.getLogger("ray.serve")


class SetRefused(RuntimeError):
    """The set cannot be served by this replica's engine for its base model (answered 503 with this message)."""


def serve_pool_engine(args: ServeArgs, sets: dict[str, str], capacity: int, max_rank: int,
                      target_modules: tuple[str, ...]) -> object:  # fmt: skip
    """The real engine of a base (lerpray.model.loading.load_shared_engine, paged)."""
    from lerpray.model.loading import load_shared_engine

    return load_shared_engine(sets, args.base_model, device=args.device, dtype=args.dtype,
                              max_batch_size=args.max_batch_size, torch_threads=args.torch_threads,
                              anchor_capacity=capacity, max_rank=max_rank, target_modules=target_modules,
                              **args.kv_engine_kwargs())  # fmt: skip


@dataclass
class _Base:
    engine: object  # a PagedEngine
    batcher: Batcher
    members: set[str] = field(default_factory=set)


class ReplicaBases:
    """The engines of one replica, by base model (see the module docstring). `load` and `release` block: call them
    off the event loop."""

    def __init__(self, wanted: Mapping[str, ServeArgs], max_sets: int, observer: BatchObserver,
                 factory: PoolFactory = serve_pool_engine) -> None:  # fmt: skip
        self.wanted, self.max_sets, self.observer, self.factory = wanted, max_sets, observer, factory
        self._bases: dict[str, _Base] = {}  # base key -> its engine
        self._lock = threading.Lock()

    @property
    def engines(self) -> list[object]:
        """The engines held now (one per base model with a set loaded)."""
        return [base.engine for base in list(self._bases.values())]

    def load(self, set_id: str) -> LiveSet:
        """Read set `set_id` from the store and add it to its base's engine (loading the base first if no set on it
        is held). Raises SetRefused for a set the engine cannot hold, the store's errors for one that cannot be read."""
        from lerpray.anchors import load_anchor_set, open_set, read_manifest
        from lerpray.anchors.calibration import load_calibration

        def read(args: ServeArgs) -> tuple:
            args = args.model_copy(update={"anchors": live.resolve_version(args.anchors)})
            store = open_set(args.anchors)
            manifest = read_manifest(store)
            return args, manifest, load_anchor_set(store), load_calibration(store)

        args, manifest, anchor_set, calibration = live.start_engine(read, self.wanted[set_id])
        key = _key(manifest, args)
        with self._lock:
            base = self._bases.get(key)
            if base is None:
                base = self._bases[key] = self._start(key, set_id, args)
                problem = base.engine.pool.problem(set_id)
            else:
                problem = base.engine.register(set_id, anchor_set)
            if problem is not None:
                self._drop(key, set_id)
                raise SetRefused(f"{set_id} cannot be served by this replica's engine for its base model: {problem}")
            base.members.add(set_id)
            engine = base.engine
            layout = manifest.layout()
            mixes = protocol.mix_context(args, layout, *calibration, engine_block=set_id)  # the engine places it
            kv_cache = live.kv_capacity(engine)
            cards = live.model_cards(args, layout, engine.context_length, kv_cache)
            tokenizer = engine.tokenizer
            logger.info("%s added to the replica's engine for %s (sets %s, %d anchor slots)", set_id,
                        manifest.base_model.name, sorted(base.members), engine.pool.capacity)  # fmt: skip
            return LiveSet(args, engine, base.batcher, cards, mixes, TokenText(tokenizer), len(tokenizer),
                           shared=tuple(sorted(base.members)))  # fmt: skip

    def release(self, set_id: str, users: Callable[[], int], timeout_s: float = 600.0) -> None:
        """Unload set `set_id` once `users()` is 0 and the engine holds none of its requests (at most `timeout_s`):
        removed from its engine's pool, the engine closed when it was the base's last set."""
        key = next((k for k, base in list(self._bases.items()) if set_id in base.members), None)
        if key is None:
            return
        engine, deadline = self._bases[key].engine, time.monotonic() + timeout_s
        while (users() or engine.holds(set_id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            self._drop(key, set_id)

    def _drop(self, key: str, set_id: str) -> None:
        """Remove a set from its base (lock held); the base goes once it has no set."""
        base = self._bases[key]
        base.members.discard(set_id)
        base.engine.unregister(set_id)
        if not base.members:
            del self._bases[key]
            deadline = time.monotonic() + 600.0
            while base.batcher.load() != (0, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            base.batcher.close()
            logger.info("the engine of %s is closed: no set on its base model is held", set_id)

    def _start(self, key: str, set_id: str, args: ServeArgs) -> _Base:
        """Load the base model of `set_id` as a paged engine sized for the configured sets on it."""
        capacity, max_rank, modules = self._reserve(key, set_id)
        capacity = args.anchor_capacity or capacity
        started = time.perf_counter()
        engine = live.start_engine(lambda a: self.factory(a, {set_id: a.anchors}, capacity, max_rank, modules), args)
        engine.on_page = getattr(self.observer, "on_page_in", None)
        batcher = Batcher(engine, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                          retry_after_s=args.retry_after_s, observer=self.observer)  # fmt: skip
        batcher.start()
        logger.info("base model of %s loaded in %.2f s: %d anchor slots of rank %d, %s", set_id,
                    time.perf_counter() - started, capacity, max_rank,
                    live.describe_capacity(live.kv_capacity(engine)))  # fmt: skip
        return _Base(engine, batcher)

    def _reserve(self, key: str, set_id: str) -> tuple[int, int, tuple[str, ...]]:
        """(anchor capacity for max_sets of the largest set, largest rank, union of target modules) over the
        configured sets on base `key` (manifests only; a set whose manifest cannot be read now is left out)."""
        from lerpray.anchors import open_set, read_manifest

        sizes, ranks, modules = [], [], set()
        for name, args in self.wanted.items():
            try:
                manifest = read_manifest(open_set(args.anchors))
            except Exception as err:  # noqa: BLE001 -- it is reserved for when it loads, or refused then
                logger.warning("manifest of %s not read while sizing the engine of %s: %s", name, set_id, err)
                continue
            if _key(manifest, args) != key:
                continue
            sizes.append(len(manifest.anchors))
            for entry in manifest.anchors:
                ranks.append(max([entry.rank, *entry.rank_pattern.values()]))
                modules.update(entry.target_modules)
        return self.max_sets * max(sizes, default=1), max(ranks, default=1), tuple(sorted(modules))


def _key(manifest, args: ServeArgs) -> str:
    """Sets with equal keys share an engine: the manifest's full base identity and the config's override."""
    return json.dumps([manifest.base_model.model_dump(mode="json"), args.model_dump(mode="json")["base_model"]],
                      sort_keys=True)  # fmt: skip
