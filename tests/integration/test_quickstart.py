"""`lerpray quickstart --tiny`: the same pipeline as `make demo` (local Ray, corpus, two anchors trained in parallel
on Ray Train, local store, Ray Serve on 127.0.0.1, requests at three alphas, VADER summary, shutdown) with a tiny
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
from lerpray.quickstart.steps import ALPHAS, ANCHORS, Generation, build_corpus, clear_built, training_config
from lerpray.quickstart.summary import side_by_side, trend


def quickstart_args(*flags: str) -> argparse.Namespace:
    from lerpray.cli import build_parser

    return build_parser().parse_args(["quickstart", *flags])


NOISE = ("Traceback", "Error", "error", "WARNING", "Warning", "(raylet)")  # what a user would take for a failure


def quiet_shutdown(captured) -> str:
    """The run's stdout, after checking that nothing from the shutdown stage on, and nothing on stderr, looks like a
    failure (Ray's INFO line and the progress bars on stderr are fine)."""
    shutdown = captured.out[captured.out.index(f"[{len(STAGES)}/{len(STAGES)}] shutdown:"):]
    for text, where in ((shutdown, "stdout from the shutdown on"), (captured.err, "stderr")):
        noisy = [line for line in text.splitlines() if any(word in line for word in NOISE)]
        assert noisy == [], f"the quickstart printed to {where}: {noisy}"
    return captured.out


@pytest.mark.integration
def test_tiny_quickstart_runs_end_to_end_and_a_second_run_reuses_it(tmp_path, capsys):
    from lerpray.anchors import open_store, read_manifest, verify_anchor_set
    from lerpray.quickstart.pipeline import run_quickstart
    from lerpray.quickstart.steps import reusable_set

    workdir = tmp_path / "qs"
    plan = plan_from_args(quickstart_args("--tiny", "--workdir", str(workdir), "--steps", "2"))

    first = run_quickstart(plan)
    out = quiet_shutdown(capsys.readouterr())
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
    assert all(line in out for line in first.trend.lines()) and "summary: mean VADER ± SE per alpha: 0:" in out
    assert "same prompt, same seed (0), alpha 0, 0.5, 1:" in out
    assert first.plot == workdir / "scores_vs_alpha.png" and first.plot.stat().st_size > 1000
    assert f"plot (mean VADER vs alpha, 95 % error bars): {first.plot}" in out
    assert first.table.read_text().count("\n") == 1 + len(first.generations)

    second = run_quickstart(plan)
    out = quiet_shutdown(capsys.readouterr())
    assert second.corpora_reused and second.anchors_reused
    assert "train done in" in out and f"reused: version {manifest.version} verifies" in out
    assert "training (" not in out  # no training started
    assert read_manifest(open_store(anchors)).version == manifest.version  # nothing republished
    assert Counter(g.alpha for g in second.generations) == per_alpha
    assert "summary: mean VADER ± SE per alpha:" in out
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
def test_trend_summary_resolves_steps_before_calling_them_monotone():
    def gens(scores: dict[float, list[float]]) -> list[Generation]:
        return [Generation(a, f"p{i % 5}", i, "t", 1, s) for a, values in scores.items() for i, s in enumerate(values)]

    rising = trend(gens({0.0: [-0.5, -0.3] * 5, 0.5: [0.0, 0.2] * 5, 1.0: [0.4, 0.6] * 5}))
    assert rising.means == pytest.approx({0.0: -0.4, 0.5: 0.1, 1.0: 0.5})
    assert rising.counts == {0.0: 10, 0.5: 10, 1.0: 10}
    assert rising.ses[0.0] == pytest.approx(math.sqrt(0.1**2 * 10 / 9) / math.sqrt(10))  # sd (ddof 1) / sqrt(n)
    assert rising.monotone and rising.verdict == "monotone increasing"
    assert rising.change == pytest.approx(0.9) and rising.slope == pytest.approx(0.9)
    assert rising.slope_ci[0] <= 0.9 <= rising.slope_ci[1] and rising.boot_unit == "prompt"
    lines = rising.lines()
    assert lines[0] == "summary: mean VADER ± SE per alpha: 0: -0.40 ± 0.03 (n=10), 0.5: +0.10 ± 0.03 (n=10), " \
                       "1: +0.50 ± 0.03 (n=10)"
    assert lines[2] == "  verdict: monotone increasing"
    # The mean rises at every step, but the middle step is within noise: not called monotone.
    noisy = trend(gens({0.0: [-0.5, 0.5] * 5, 0.5: [-0.4, 0.6] * 5, 1.0: [0.6, 1.6] * 5}))
    assert not noisy.monotone and noisy.verdict == "monotone not established: 1 of 2 steps resolved"
    assert "0->0.5 +0.10 ± 0.24 (not resolved)" in noisy.lines()[1]  # sd 0.527, SE 0.167 per alpha


@pytest.mark.unit
def test_side_by_side_shows_one_prompt_and_seed_at_three_alphas():
    gens = [Generation(a, p, s, f"{p} text {a}", 3, a) for a in ALPHAS for p in ("A", "B") for s in (0, 1)]
    lines = side_by_side(gens)
    assert lines[:5] == ["same prompt, same seed (0), alpha 0, 0.5, 1:", "  A", "    alpha 0    +0.00  | A text 0.0",
                         "    alpha 0.5  +0.50  | A text 0.5", "    alpha 1    +1.00  | A text 1.0"]  # fmt: skip
    assert len(lines) == 1 + 2 * 4


@pytest.mark.unit
@pytest.mark.parametrize("flags, message", [
    (["--prompts", "0"], "--prompts must be in 1..12"),
    (["--prompts", "13"], "--prompts must be in 1..12"),
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
    assert (real.steps, len(real.prompts), real.samples, real.max_tokens) == (60, 12, 8, 32)
    assert (tiny.steps, len(tiny.prompts), tiny.samples, tiny.max_tokens) == (4, 2, 1, 8)
    assert real.workdir != tiny.workdir  # a tiny run never reuses (or clobbers) the real run's anchors
    assert plan_from_args(quickstart_args("--workdir", str(tmp_path), "--steps", "7")).steps == 7
