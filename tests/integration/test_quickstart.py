"""`lerpray quickstart --tiny`: the same pipeline as `make demo` (local Ray, corpus, two anchors trained in parallel
on Ray Train, local store, Ray Serve on 127.0.0.1, requests at five alphas, VADER summary, shutdown) with a tiny
random Llama, run twice: the second run must reuse the corpus and the anchor set instead of rebuilding them.

The unit tests below pin the pieces the reuse decision and the summary line rest on.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import pytest

from lerpray.quickstart.config import plan_from_args
from lerpray.quickstart.pipeline import STAGES
from lerpray.quickstart.steps import ALPHAS, ANCHORS, Generation, build_corpus, clear_built, training_config, trend


def quickstart_args(*flags: str) -> argparse.Namespace:
    from lerpray.cli import build_parser

    return build_parser().parse_args(["quickstart", *flags])


@pytest.mark.integration
def test_tiny_quickstart_runs_end_to_end_and_a_second_run_reuses_it(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("vaderSentiment")
    from lerpray.anchors import open_store, read_manifest, verify_anchor_set
    from lerpray.quickstart.pipeline import run_quickstart
    from lerpray.quickstart.steps import reusable_set

    workdir = tmp_path / "qs"
    plan = plan_from_args(quickstart_args("--tiny", "--workdir", str(workdir), "--steps", "2"))

    first = run_quickstart(plan)
    out = capsys.readouterr().out
    for number, stage in enumerate(STAGES, 1):
        assert f"[{number}/{len(STAGES)}] {stage}:" in out and f"{stage} done in" in out
    assert not first.corpora_reused and not first.anchors_reused
    anchors = workdir / "anchors"
    assert verify_anchor_set(anchors) == []
    manifest = read_manifest(open_store(anchors))
    assert [a.name for a in manifest.anchors] == list(ANCHORS)
    run_id = manifest.training["run_id"]
    assert run_id.startswith("quickstart-")
    assert all(entry.metrics["step"] == 2 for entry in manifest.anchors)
    # Every alpha got an answer for every prompt and seed, each with at least one generated token.
    per_alpha = Counter(g.alpha for g in first.generations)
    assert per_alpha == {alpha: len(plan.prompts) * plan.samples for alpha in ALPHAS}
    assert all(g.tokens >= 1 and -1.0 <= g.score <= 1.0 for g in first.generations)
    # Same prompt and seed at alpha 0 and alpha 1: the mix reached the engine, so the texts differ somewhere.
    text = {(g.alpha, g.prompt, g.seed): g.text for g in first.generations}
    assert any(text[0.0, p, s] != text[1.0, p, s] for p in plan.prompts for s in range(plan.samples))
    assert first.trend.line() in out and "summary: mean VADER over alpha 0..1:" in out

    second = run_quickstart(plan)
    out = capsys.readouterr().out
    assert second.corpora_reused and second.anchors_reused
    assert "train done in" in out and f"reused: version {manifest.version} verifies" in out
    assert "training (" not in out  # no training started
    assert read_manifest(open_store(anchors)).version == manifest.version  # nothing republished
    assert Counter(g.alpha for g in second.generations) == per_alpha
    assert "summary: mean VADER over alpha 0..1:" in out
    # A set trained with other settings would not be reused.
    assert reusable_set(anchors, run_id + "0")[0] is False


@pytest.mark.unit
def test_the_reuse_stamp_follows_settings_and_data(tmp_path):
    corpora = tmp_path / "corpora"
    build_corpus(corpora, tiny=True, max_per_pole=None, seed=0)

    def run_id(**overrides) -> str:
        kw = {"corpora": corpora, "workdir": tmp_path, "base_model": None, "steps": 4, "tiny": True, "cpus": 2}
        return training_config(**{**kw, **overrides}).run_id

    assert run_id() == run_id()
    assert run_id(steps=5) != run_id()
    assert run_id(tiny=False) != run_id()
    assert run_id(base_model=str(tmp_path / "other-model")) != run_id()
    before = run_id()
    train_file = corpora / "sentiment.negative.train.jsonl"
    train_file.write_text(train_file.read_text() + '{"text": "one more awful day"}\n')
    assert run_id() != before


@pytest.mark.unit
def test_fresh_removes_only_what_quickstart_built(tmp_path):
    for name in ("corpora", "anchors", "ray", "tiny-model", "notes"):
        (tmp_path / name).mkdir()
    assert sorted(clear_built(tmp_path)) == ["anchors", "corpora", "ray", "tiny-model"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]


@pytest.mark.unit
def test_trend_summary_line():
    def gens(scores: dict[float, list[float]]) -> list[Generation]:
        return [Generation(a, "p", i, "t", 1, s) for a, values in scores.items() for i, s in enumerate(values)]

    rising = trend(gens({0.0: [-0.5, -0.3], 0.5: [0.0, 0.2], 1.0: [0.4, 0.6]}))
    assert rising.means == pytest.approx({0.0: -0.4, 0.5: 0.1, 1.0: 0.5})
    assert rising.monotone and rising.spearman == pytest.approx(1.0) and rising.change == pytest.approx(0.9)
    assert rising.line() == ("summary: mean VADER over alpha 0..1: -0.40 -> +0.10 -> +0.50 "
                             "(monotone, Spearman +1.00, change 0->1 +0.90)")
    bumpy = trend(gens({0.0: [0.1], 0.25: [0.3], 0.5: [0.2], 1.0: [0.4]}))
    assert not bumpy.monotone and bumpy.spearman == pytest.approx(0.8)
    flat = trend(gens({0.0: [0.0], 0.5: [0.0], 1.0: [0.0]}))
    assert math.isnan(flat.spearman) and "Spearman n/a" in flat.line()


@pytest.mark.unit
@pytest.mark.parametrize("flags, message", [
    (["--prompts", "0"], "--prompts must be in 1..6"),
    (["--prompts", "7"], "--prompts must be in 1..6"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--model", "/no/such/folder"], "no such folder"),
])
def test_bad_flags_say_what_to_change(flags, message):
    with pytest.raises(ValueError, match=message):
        plan_from_args(quickstart_args(*flags))


@pytest.mark.unit
def test_sizes_default_by_mode(tmp_path):
    real = plan_from_args(quickstart_args())
    tiny = plan_from_args(quickstart_args("--tiny"))
    assert (real.steps, len(real.prompts), real.samples, real.max_tokens) == (60, 6, 2, 32)
    assert (tiny.steps, len(tiny.prompts), tiny.samples, tiny.max_tokens) == (4, 2, 1, 8)
    assert real.workdir != tiny.workdir  # a tiny run never reuses (or clobbers) the real run's anchors
    assert plan_from_args(quickstart_args("--workdir", str(tmp_path), "--steps", "7")).steps == 7
