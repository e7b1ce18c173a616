"""Which engine each model id of a replica runs on: every set trained on the main set's base model shares one.

The sets of a Serve config (`anchors` and `sets:`) whose manifests name the same base model identity as the main
set's load into ONE engine over one copy of the base weights (lerpray.model.multi_set.interpolate_sets: each set a
block of the coefficient axis). Each model id keeps its own LiveSet: its cards, calibration, presets and a
`MixContext` over its own anchors, whose `engine_block` places every resolved mix in the shared row with zeros on
the other sets' anchors (ResolvedMix.embed), so the mix is still resolved once, against the set's own layout. The
group's LiveSets share the engine and its batcher, so rows of different sets share a forward pass. A set on another
base model keeps an engine of its own, as does every set when no `shared_factory` is given (an injected test engine).

Versions: a group is kept only while every member serves the same version and the group has the same members; a
change to any of them reloads the whole group (a new engine beside the old, which the deployment retires once its
batcher is idle). No Ray here: the deployment calls `load_sets`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from lerpray.serve import live, protocol
from lerpray.serve.batcher import Batcher, BatchObserver, EngineLike
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import EngineFactory, LiveSet
from lerpray.serve.replies import TokenText

__all__ = ["SharedFactory", "load_sets", "serve_shared_engine", "start_group"]

SharedFactory = Callable[[ServeArgs, dict[str, str]], EngineLike]  # (main set's args, block name -> URI) -> engine

logger = logging.getLogger(__name__)


def serve_shared_engine(args: ServeArgs, sets: dict[str, str]) -> EngineLike:
    """The real engine of a group (lerpray.model.loading.load_shared_engine with the serve config's settings)."""
    from lerpray.model.loading import load_shared_engine

    return load_shared_engine(sets, args.base_model, device=args.device, dtype=args.dtype,
                              max_batch_size=args.max_batch_size, torch_threads=args.torch_threads,
                              anchor_capacity=args.anchor_capacity, **args.kv_engine_kwargs())  # fmt: skip


def load_sets(wanted: Mapping[str, ServeArgs], current: Mapping[str, LiveSet], factory: EngineFactory,
              observer: BatchObserver, shared_factory: SharedFactory | None = None) -> dict[str, LiveSet]:  # fmt: skip
    """model id -> its LiveSet for `wanted` (live.set_args: the main set first): the unchanged ones of `current`
    kept, the others loaded (blocking). On failure every batcher started here is closed and the error raised."""
    resolved, group = live.start_engine(lambda _: _plan(wanted, shared_factory is not None), next(iter(wanted.values())))
    new: dict[str, LiveSet] = {}
    try:
        if group:
            kept = [current.get(name) for name in group]
            if all(s is not None and s.shared == tuple(group) and s.args.anchors == resolved[n]
                   for s, n in zip(kept, group, strict=True)):  # fmt: skip
                new.update(zip(group, kept, strict=True))
            else:
                members = {n: wanted[n].model_copy(update={"anchors": resolved[n]}) for n in group}
                new.update(start_group(members, shared_factory, observer))
        for name, args in wanted.items():
            if name in new:
                continue
            served = current.get(name)
            if served is not None and not served.shared and served.args.anchors == resolved[name]:
                new[name] = served
            else:
                new[name] = live.start_set(args, factory, observer)
    except Exception:
        kept = {id(s.batcher) for s in current.values()}
        for batcher in {id(s.batcher): s.batcher for s in new.values() if id(s.batcher) not in kept}.values():
            batcher.close()
        raise
    return {name: new[name] for name in wanted}


def _plan(wanted: Mapping[str, ServeArgs], sharing: bool) -> tuple[dict[str, str], list[str]]:
    """(model id -> resolved version URI, the model ids that share the main set's base model when 2 or more and
    `sharing`, else []): reads the store, so start_engine retries it."""
    from lerpray.anchors import open_set, read_manifest

    resolved = {name: live.resolve_version(args.anchors) for name, args in wanted.items()}
    if not sharing or len(wanted) < 2:
        return resolved, []
    bases = {name: read_manifest(open_set(uri)).base_model for name, uri in resolved.items()}
    main = next(iter(wanted))
    group = [name for name in wanted if bases[name] == bases[main] and wanted[name].base_model == wanted[main].base_model]
    return resolved, group if len(group) > 1 else []


def start_group(members: Mapping[str, ServeArgs], shared_factory: SharedFactory,
                observer: BatchObserver) -> dict[str, LiveSet]:  # fmt: skip
    """Load `members` (model id -> args naming a resolved version, all on one base model) into one engine and give
    each its LiveSet over it, sharing one batcher (the first member's batch and queue settings)."""
    from lerpray.anchors import open_set, read_manifest
    from lerpray.anchors.calibration import load_calibration

    main = next(iter(members.values()))
    paged = main.anchor_capacity is not None  # the pool names sets freely: by model id, as its errors do
    blocks = {(name if paged else f"set{i}"): args.anchors for i, (name, args) in enumerate(members.items())}

    def load(_: ServeArgs) -> tuple[EngineLike, list]:
        engine = shared_factory(main, blocks)
        stores = [open_set(args.anchors) for args in members.values()]
        return engine, [(read_manifest(s).layout(), load_calibration(s)) for s in stores]

    engine, owns = live.start_engine(load, main)
    width, kv_cache = len(engine.layout.anchors), live.kv_capacity(engine)
    logger.info("%s share one engine over one base model: %s", ", ".join(members), live.describe_capacity(kv_cache))
    pool = getattr(engine, "pool", None)  # a PagedEngine (anchor_capacity): sets paged in by use
    if pool is not None:
        engine.on_page = getattr(observer, "on_page_in", None)
        for name in members:
            if problem := pool.problem(name):
                logger.warning("%s cannot be served by this replica's engine (its requests get 503): %s", name, problem)
    batcher = Batcher(engine, max_batch_size=main.max_batch_size, max_queue=main.max_queue,
                      retry_after_s=main.retry_after_s, observer=observer)  # fmt: skip
    batcher.start()
    tokenizer = getattr(engine, "tokenizer", None)
    out: dict[str, LiveSet] = {}
    try:
        for (name, args), block, (layout, calibration) in zip(members.items(), blocks, owns, strict=True):
            span = engine.imodel.blocks[block] if pool is None else None
            if span is not None and len(span) != len(layout.anchors):
                raise ValueError(f"the shared engine holds {len(span)} anchors for {name} but its manifest lists "
                                 f"{len(layout.anchors)}")  # fmt: skip
            placed = block if span is None else (span.start, width)  # a paged set's mix is placed by the engine
            mixes = protocol.mix_context(args, layout, *calibration, engine_block=placed)
            cards = live.model_cards(args, layout, engine.context_length, kv_cache)
            out[name] = LiveSet(args, engine, batcher, cards, mixes, TokenText(tokenizer),
                                len(tokenizer) if tokenizer else None, shared=tuple(members))  # fmt: skip
            where = f"paged by use, {width} anchor slots" if span is None else f"anchors {span.start}-{span.stop - 1}"
            logger.info("%s loaded from %s into the shared engine (%s)", name, args.anchors, where)
    except Exception:
        batcher.close()
        raise
    return out
