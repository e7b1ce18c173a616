"""Sweep grids (alpha with extrapolation, lambda, simplex), job order and seeds, sweep config validation, and the
statistics the report computes over a grid (Spearman, change 0 -> 1 with its SE, entanglement, perplexity ratio)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pydantic import ValidationError

from lerpray.eval.config import BUILTIN_PROMPTS, DEFAULT_ALPHAS, GridConfig, PromptConfig, SweepConfig, load_prompts
from lerpray.eval.grid import (
    SweepError,
    alpha_grid,
    build_grid,
    lambda_grid,
    make_jobs,
    resolve_points,
    simplex_grid,
)
from lerpray.eval.report import alpha_effects, entanglement, perplexity_summary, spearman
from lerpray.mixing import AnchorLayout

pytestmark = pytest.mark.unit

LAYOUT = AnchorLayout(
    anchors=("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal", "humor.funny",
             "humor.serious"),
    attributes={"sentiment": ("sentiment.negative", "sentiment.positive"),
                "formality": ("formality.informal", "formality.formal"), "humor": ("humor.serious", "humor.funny")},
)  # fmt: skip


def test_alpha_grid_marks_extrapolation_and_resolves_to_pole_weights():
    points = alpha_grid(["sentiment", "formality"], DEFAULT_ALPHAS)
    assert len(points) == 18 and len({p.mix_id for p in points}) == 18
    assert [p.extrapolate for p in points[:9]] == [True, True, False, False, False, False, False, True, True]
    assert points[0].mix() == {"alpha": {"sentiment": -1.0}, "lambda": {"sentiment": 1.0}, "extrapolate": True}
    assert "extrapolate" not in points[3].mix()
    coeffs = [m.coeffs for m in resolve_points(points, LAYOUT)]
    assert coeffs[0] == (-1.0, 2.0, 0.0, 0.0, 0.0, 0.0)  # alpha -1: high pole -1, low pole 2
    assert coeffs[3] == (0.25, 0.75, 0.0, 0.0, 0.0, 0.0)
    assert coeffs[9 + 8] == (0.0, 0.0, 2.0, -1.0, 0.0, 0.0)  # formality at alpha 2


def test_lambda_grid_splits_weight_between_two_attributes():
    points = lambda_grid(["sentiment", "humor"], [0.0, 0.3, 1.0], {"humor": 0.0})
    assert [p.mix_id for p in points][1] == "lambda:sentiment=0.3,humor=0.7"  # no 0.7000000000000001
    assert points[1].alpha == {"sentiment": 1.0, "humor": 0.0}
    coeffs = [m.coeffs for m in resolve_points(points, LAYOUT)]
    assert coeffs[1] == pytest.approx((0.3, 0.0, 0.0, 0.0, 0.0, 0.7))  # sentiment high, humor low pole


def test_simplex_grid_covers_the_simplex_once():
    points = simplex_grid(["sentiment", "formality", "humor"], 4, {})
    assert len(points) == 15 and len({p.mix_id for p in points}) == 15
    for p in points:
        assert sum(p.lam.values()) == pytest.approx(1.0) and min(p.lam.values()) >= 0.0
        assert math.isnan(p.x) and not p.extrapolate
    corners = [p for p in points if max(p.lam.values()) == 1.0]
    assert len(corners) == 3
    assert sum(resolve_points(points, LAYOUT)[7].coeffs) == pytest.approx(1.0)  # inside the convex hull


def test_build_grid_checks_attributes_and_drops_duplicates():
    grids = [GridConfig(alphas=[0, 1]), GridConfig(kind="alpha", attributes=["humor"], alphas=[1, 2])]
    points = build_grid(grids, ["sentiment", "humor"])
    assert [p.mix_id for p in points] == ["alpha:sentiment=0", "alpha:sentiment=1", "alpha:humor=0", "alpha:humor=1",
                                          "alpha:humor=2"]  # fmt: skip
    with pytest.raises(SweepError, match="unknown attributes \\['tone'\\]"):
        build_grid([GridConfig(attributes=["tone"])], ["sentiment"])
    with pytest.raises(SweepError, match="list `attributes`"):
        build_grid([GridConfig()], None)


def test_jobs_put_many_mixes_in_a_batch_and_share_seeds_across_mixes():
    jobs = make_jobs(n_points=3, n_prompts=2, samples=2, seed=10)
    assert len(jobs) == 12
    assert [j.point for j in jobs[:4]] == [0, 1, 2, 0]  # mix innermost
    assert {(j.prompt, j.sample, j.seed) for j in jobs if j.point == 0} == {
        (j.prompt, j.sample, j.seed) for j in jobs if j.point == 2
    }
    assert sorted({j.seed for j in jobs}) == [10, 11]


def test_config_validation_says_what_to_change():
    with pytest.raises(ValidationError, match="exactly 2 distinct attributes"):
        GridConfig(kind="lambda", attributes=["a", "b", "c"])
    with pytest.raises(ValidationError, match="lambdas must lie in"):
        GridConfig(kind="lambda", attributes=["a", "b"], lambdas=[1.5])
    with pytest.raises(ValidationError, match="give `anchors`"):
        SweepConfig(out="x")
    assert SweepConfig(out="x", server="http://127.0.0.1:1", perplexity={"texts": "t.txt"}).anchors is None  # echo
    with pytest.raises(ValidationError, match="extra"):
        SweepConfig(out="x", anchors="a", grid=[])  # typo of `grids`


def test_command_line_overrides_apply_before_the_file_is_checked(tmp_path):
    from lerpray.eval.config import SweepConfigError, load_sweep_config

    path = tmp_path / "sweep.yaml"
    path.write_text("out: results/x\n")  # neither anchors nor server: only the command line completes it
    with pytest.raises(SweepConfigError, match="give `anchors`"):
        load_sweep_config(path)
    config = load_sweep_config(path, {"server": "http://127.0.0.1:8000", "out": "elsewhere"})
    assert (config.server, str(config.out), config.anchors) == ("http://127.0.0.1:8000", "elsewhere", None)


def test_prompts_builtin_and_from_file(tmp_path):
    assert len(set(BUILTIN_PROMPTS)) == len(BUILTIN_PROMPTS) >= 64
    assert load_prompts(PromptConfig(limit=3)) == list(BUILTIN_PROMPTS[:3])
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts(PromptConfig(file=tmp_path / "p.txt")) == ["first", "second"]


def test_spearman_ranks():
    assert spearman([0, 0.25, 0.5, 1], [1, 2, 3, 10]) == pytest.approx(1.0)
    assert spearman([0, 0.25, 0.5, 1], [5, 4, 3, 1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert math.isnan(spearman([0, 1, 2], [1, 1, 1]))


def _table() -> pd.DataFrame:
    """Sentiment sweep moves vader by +1.0 per alpha and fkgl by +0.5; formality moves fkgl by -2 and vader by 0.1."""
    rows = []
    for attr, slopes in (("sentiment", (1.0, 0.5)), ("formality", (0.1, -2.0))):
        for x in (-1.0, 0.0, 0.5, 1.0, 2.0):
            for noise in (-0.1, 0.1):
                rows.append({"grid": "alpha", "attribute": attr, "x": x,
                             "score.vader": slopes[0] * x + noise, "score.fkgl": slopes[1] * x - noise})  # fmt: skip
    return pd.DataFrame(rows)


def test_effects_and_entanglement_normalise_by_each_scorers_own_attribute():
    scorers = {"vader": "sentiment", "fkgl": "formality"}
    effects = alpha_effects(_table(), scorers).set_index(["attribute", "scorer"])
    own = effects.loc[("sentiment", "vader")]
    assert own["own"] and own["spearman"] == pytest.approx(1.0) and own["delta"] == pytest.approx(1.0)
    assert own["se"] == pytest.approx(math.sqrt(0.02 / 2 + 0.02 / 2))  # var of (-0.1, 0.1) is 0.02, n = 2
    assert effects.loc[("formality", "fkgl"), "spearman"] == pytest.approx(-1.0)
    raw, norm = entanglement(effects.reset_index(), scorers)
    assert raw.loc["sentiment", "fkgl"] == pytest.approx(0.5)
    assert norm.loc["sentiment", "fkgl"] == pytest.approx(-0.25)  # 0.5 / -2.0: a quarter of fkgl's own change
    assert norm.loc["formality", "vader"] == pytest.approx(0.1)
    assert norm.loc["sentiment", "vader"] == pytest.approx(1.0) and norm.loc["formality", "fkgl"] == pytest.approx(1.0)


def test_perplexity_ratio_uses_the_worse_anchor():
    ppl = pd.DataFrame({"grid": ["alpha"] * 5, "attribute": ["s"] * 5, "x": [-1.0, 0.0, 0.5, 1.0, 2.0],
                        "perplexity": [90.0, 10.0, 15.0, 12.0, 40.0]})  # fmt: skip
    (row,) = perplexity_summary(ppl).to_dict("records")
    assert row["ratio"] == pytest.approx(15.0 / 12.0) and row["max_all"] == 90.0 and row["argmax_all"] == -1.0
    (row,) = perplexity_summary(ppl[ppl["x"] != 0.0]).to_dict("records")  # no alpha-0 point: the other anchor
    assert row["ratio"] == pytest.approx(15.0 / 12.0)


def test_upload_copies_every_output_file_to_the_store(tmp_path):
    from lerpray.eval.commands import upload_folder

    out = tmp_path / "sweep"
    (out / "plots").mkdir(parents=True)
    (out / "report.md").write_text("# report\n")
    (out / "plots" / "a.png").write_bytes(b"\x89PNG")
    keys = upload_folder(out, str(tmp_path / "store"))
    assert keys == ["plots/a.png", "report.md"]
    assert (tmp_path / "store" / "plots" / "a.png").read_bytes() == b"\x89PNG"
