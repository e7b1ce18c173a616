"""Sweeps: grids of mixes (lerpray.eval.grid), every (mix, prompt, sample) generated (lerpray.eval.backends) and
scored, perplexity per mix (lerpray.eval.perplexity), then tables, plots and report.md (lerpray.eval.report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from lerpray.eval.backends import generate_http, generate_in_process
from lerpray.eval.config import SweepConfig, load_prompts
from lerpray.eval.grid import SweepError, build_grid, make_jobs, resolve_points
from lerpray.eval.report import SweepOutputs, generations_table, write_outputs
from lerpray.mixing import AnchorLayout

if TYPE_CHECKING:
    from lerpray.model.engine import Engine

__all__ = ["run_sweep"]


def run_sweep(config: SweepConfig) -> SweepOutputs:
    """Build the grid, generate every (mix, prompt, sample), score every generation with every scorer, measure
    perplexity per mix, then write the tables, the plots and report.md into `config.out`."""
    from lerpray.eval.perplexity import heldout_texts, http_perplexities, perplexity_table, sweep_perplexity  # torch

    engine = _engine(config) if config.anchors and (config.server is None or config.perplexity) else None
    layout = engine.layout if engine is not None else _layout(config.anchors)
    points = build_grid(config.grids, list(layout.attributes) if layout is not None else None)
    mixes = resolve_points(points, layout) if engine is not None else None  # once: generation and perplexity
    prompts = load_prompts(config.prompts)
    scorers = [spec.load() for spec in config.scorer_configs()]  # before generating: bad specs fail fast
    if len({s.name for s in scorers}) != len(scorers):
        raise SweepError(f"scorer names must be unique, got {[s.name for s in scorers]}; list each scorer once")
    jobs = make_jobs(len(points), len(prompts), config.prompts.samples, config.prompts.seed)
    if config.server is not None:
        results = generate_http(config.server, [p.mix() for p in points], prompts, jobs, config.sampling,
                                chat=config.prompts.chat, model=config.server_model, concurrency=config.concurrency,
                                timeout_s=config.request_timeout_s, api_key=config.server_api_key())  # fmt: skip
    else:
        results = generate_in_process(engine, mixes, prompts, jobs, config.sampling, chat=config.prompts.chat)
    table = generations_table(points, prompts, jobs, results)
    for scorer in tqdm(scorers, desc="score", unit="scorer"):
        table[f"score.{scorer.name}"] = scorer.score(table["text"].tolist())
    ppl = None
    if config.perplexity is not None:
        pc = config.perplexity
        texts = heldout_texts(texts=pc.texts, corpora=pc.corpora, max_texts=pc.max_texts, seed=config.prompts.seed)
        if engine is not None:
            ppl = sweep_perplexity(engine.imodel, engine.tokenizer, points, [m.coeffs for m in mixes],
                                   texts, batch_size=pc.batch_size, max_length=pc.max_length)  # fmt: skip
        else:  # the server scores the texts (echo); the base model (all coefficients 0) is not one of its mixes
            scored = http_perplexities(config.server, texts, {p.mix_id: p.mix() for p in points},
                                       model=config.server_model, max_length=pc.max_length,
                                       concurrency=config.concurrency, timeout_s=config.request_timeout_s,
                                       api_key=config.server_api_key())  # fmt: skip
            ppl = perplexity_table(points, scored)
    setup = {"backend": config.server or f"in-process, anchors {config.anchors}", "mixes": len(points),
             "prompts": len(prompts), "samples per prompt": config.prompts.samples, "generations": len(jobs),
             "sampling": config.sampling.model_dump()}  # fmt: skip
    scorer_attributes = {s.name: s.attribute for s in scorers}
    return write_outputs(config.out, table, scorer_attributes, setup=setup, perplexity=ppl)


def _engine(config: SweepConfig) -> Engine:
    from lerpray.model.engine import Engine

    return Engine.from_uri(config.anchors, base_model=config.base_model, device=config.device,
                           max_batch_size=config.batch_size)  # fmt: skip


def _layout(anchors: str | None) -> AnchorLayout | None:
    """The anchor set's layout from its manifest alone (no weights), or None without `anchors`."""
    if anchors is None:
        return None
    from lerpray.anchors import open_store, read_manifest

    return read_manifest(open_store(anchors)).layout()
