"""The one way to build an engine from an anchor-set URI: the serving replicas and the batch actors both call it
(an engine in a test or a benchmark may be built from `Engine.from_uri` or `Engine(...)` directly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lerpray.model.engine import Engine
    from lerpray.model.paged_engine import PagedEngine

__all__ = ["load_engine", "load_shared_engine"]


def load_engine(anchors: str, base_model: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                max_batch_size: int = 32, torch_threads: int | None = None, endpoint_url: str | None = None,
                region: str | None = None, kv_cache_bytes: int | None = None, kv_cache_fraction: float | None = None,
                context_length: int | None = None) -> Engine:  # fmt: skip
    """The base model (the manifest's, or `base_model`) with the anchor set at `anchors` (a folder, s3:// with an
    explicit endpoint/region or the AWS environment, or URI@VERSION), checksums verified on load.

    The KV cache is allocated now, `max_batch_size` slots of min(`context_length`, what the budget fits) tokens; the
    budget is `kv_cache_bytes`, else `kv_cache_fraction` of free CUDA memory, else the engine's default
    (lerpray/model/kv_budget.py). `engine.context_length` is the capped length."""
    import torch

    from lerpray.anchors import open_store
    from lerpray.model.engine import Engine

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    store = open_store(anchors, endpoint_url=endpoint_url, region=region)
    return Engine.from_uri(store, base_model, dtype=getattr(torch, dtype), device=device,
                           max_batch_size=max_batch_size, kv_cache_bytes=kv_cache_bytes,
                           kv_cache_fraction=kv_cache_fraction, context_length=context_length)  # fmt: skip


def load_shared_engine(sets: dict[str, str], base_model: str | None = None, *, device: str = "cpu",
                       dtype: str = "float32", max_batch_size: int = 32, torch_threads: int | None = None,
                       endpoint_url: str | None = None, region: str | None = None, kv_cache_bytes: int | None = None,
                       kv_cache_fraction: float | None = None, context_length: int | None = None,
                       anchor_capacity: int | None = None, max_rank: int | None = None,
                       target_modules: tuple[str, ...] = ()) -> Engine | PagedEngine:  # fmt: skip
    """One engine over one copy of the base model holding every anchor set of `sets` (block name -> URI, all trained
    on one base model: lerpray.model.multi_set.interpolate_sets), each set a block of the coefficient axis in the
    order given (`engine.imodel.blocks`). With `anchor_capacity`, a PagedEngine instead: at most that many anchors
    resident, the sets paged in by use (lerpray.model.anchor_pool; requests name their block), the pool's rank
    columns and layers reserved for sets registered later by `max_rank` and `target_modules`. The other arguments
    as for `load_engine`; the base model is the first set's manifest's unless `base_model` is given. Raises
    ModelMismatchError naming a set that does not fit."""
    import torch

    from lerpray.anchors import load_anchor_set, open_store
    from lerpray.model.base import load_base_model
    from lerpray.model.engine import Engine
    from lerpray.model.multi_set import interpolate_sets

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    loaded = {name: load_anchor_set(open_store(uri, endpoint_url=endpoint_url, region=region))
              for name, uri in sets.items()}
    first = next(iter(loaded.values()))
    model, tokenizer = load_base_model(base_model or first.manifest.base_model.name, dtype=getattr(torch, dtype),
                                       device=device)
    engine_kw = {"device": device, "max_batch_size": max_batch_size, "kv_cache_bytes": kv_cache_bytes,
                 "kv_cache_fraction": kv_cache_fraction, "context_length": context_length}
    if anchor_capacity is None:
        return Engine(interpolate_sets(model, loaded), tokenizer, **engine_kw)
    from lerpray.model.anchor_pool import build_pool
    from lerpray.model.paged_engine import PagedEngine

    pool = build_pool(model, loaded, anchor_capacity, max_rank=max_rank, target_modules=target_modules)
    return PagedEngine(Engine(pool.imodel, tokenizer, **engine_kw), pool)
