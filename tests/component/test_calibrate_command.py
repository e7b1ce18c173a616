"""The README's calibrate command, `lerpray eval calibrate SET --scorers vader --out DIR`, run exactly as written on
tiny sets (a tiny Llama; the shipped prompt set cut to its first 8 openings so a run takes seconds):

- anchors that do not move the score (both sentiment poles the same adapter: every alpha is the same weights):
  refused as flat, exit 2, the message says why and what to change, nothing saved beside the set;
- replies that are mostly empty (what instruction prompts sent as raw completions to an instruct model gave):
  refused, saying to use completion prompts or --chat;
- a scripted generator whose replies grow more positive with the sentiment anchor's coefficient (real VADER scores
  them): the calibration is saved beside the set, with its prompt provenance, per-prompt change and noise share.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lerpray.anchors import open_set
from lerpray.anchors.calibration import CALIBRATION_NAME, read_calibration_doc
from lerpray.cli import main as cli_main
from lerpray.eval import prompt_sets, sweep

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def sets(tmp_path_factory, tiny_llama_model, tiny_anchor_dirs) -> dict[str, str]:
    """Two anchor sets of the tiny Llama, saved with its tokenizer so the sets name a loadable base folder:
    "flat" (both sentiment poles the same adapter) and "moving" (conftest's random adapters)."""
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity
    from lerpray.testing import tiny_tokenizer

    root = tmp_path_factory.mktemp("calibrate-sets")
    tiny_llama_model.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    identity = model_identity(tiny_llama_model, str(root / "base"))
    flat = {**tiny_anchor_dirs, "sentiment.negative": tiny_anchor_dirs["sentiment.positive"]}
    build_anchor_set(identity, flat, root / "flat")
    build_anchor_set(identity, tiny_anchor_dirs, root / "moving")
    return {"flat": str(root / "flat"), "moving": str(root / "moving")}


@pytest.fixture(autouse=True)
def eight_openings(tmp_path, monkeypatch):
    lines = prompt_sets.OPENINGS.read_text().splitlines()[:8]
    (tmp_path / "openings.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(prompt_sets, "OPENINGS", tmp_path / "openings.jsonl")


def readme_command(anchors: str, out: Path) -> list[str]:
    return ["eval", "calibrate", anchors, "--scorers", "vader", "--out", str(out)]


def scripted(reply):
    """A stand-in for the in-process generator: reply(positive coefficient, prompt index) per job (mixes are the
    grid points' ResolvedMix values, lerpray.steering)."""
    from lerpray.model import GenerationResult

    def generate(engine, mixes, prompts, jobs, sampling, *, chat=False):
        return [
            GenerationResult(str(i), reply(mixes[j.point].coeffs[0], j.prompt), 3, 8, "length")
            for i, j in enumerate(jobs)
        ]

    return generate


def test_anchors_that_do_not_move_the_score_are_refused_and_nothing_is_saved(sets, tmp_path, capsys):
    assert cli_main(readme_command(sets["flat"], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "lerpray eval: error: sentiment: the vader score moves +0.0000 from alpha 0 to alpha 1" in err
    assert "flat within its own noise" in err and "Use anchors that move this scorer" in err
    assert "nothing was saved beside the set" in err
    assert not (Path(sets["flat"]) / CALIBRATION_NAME).exists() and read_calibration_doc(open_set(sets["flat"])) is None
    assert (tmp_path / "out" / "sweep" / "generations.csv").is_file()  # kept for a look at the replies


def test_mostly_empty_replies_are_refused(sets, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "generate_in_process", scripted(lambda pos, p: "Good." if p == 0 else ""))
    assert cli_main(readme_command(sets["moving"], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "sentiment: 21 of 28 replies (75%; 21 empty) are empty or unscorable by vader" in err
    assert "give completion prompts (the default set), send instruction prompts through the chat template" in err
    assert not (Path(sets["moving"]) / CALIBRATION_NAME).exists()


def test_a_score_that_moves_with_the_anchors_is_calibrated_and_saved(sets, tmp_path, capsys, monkeypatch):
    # each prompt has its own baseline (odd prompts add a sad word); the positive anchor adds happy words
    def reply(positive: float, prompt: int) -> str:
        return " ".join(["It was a day."] + ["Good."] * max(0, round(2 * positive + 1)) + ["Sad."] * (prompt % 2))

    monkeypatch.setattr(sweep, "generate_in_process", scripted(reply))
    assert cli_main(readme_command(sets["moving"], tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "saved the calibration beside the set" in out and "alpha 0 -> 1 per prompt: +" in out
    doc = read_calibration_doc(open_set(sets["moving"]))
    assert doc == json.loads((tmp_path / "out" / "calibration.json").read_text())
    curve = doc["curves"]["sentiment"]
    assert curve["alphas"] == [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5] and curve["increasing"] is True
    assert curve["fit"][1] < curve["fit"][5] and curve["change"][1] == 0.0 and curve["change"][5] > 0.1
    assert curve["signal"]["change"] == curve["change"][5] and curve["unscorable"] == 0.0
    assert curve["noise_share"]["baseline_sd_over_range"] > 0.5  # "Sad." on odd prompts: baselines far apart
    noise = curve["noise_share"]
    assert 0 < noise["change_band_over_range"] < noise["band_over_range"]  # the baselines cancel in the change
    assert doc["prompts"] | {"sha256": None} == {
        "source": "lerpray openings (shipped), even indices", "licence": prompt_sets.OPENINGS_LICENCE, "count": 4,
        "chat": False, "domains": {"home": 1, "nature": 1, "reviews": 1, "travel": 1}, "samples": 1, "seed": 0,
        "sha256": None}  # fmt: skip
    assert (doc["sampling"]["max_tokens"], doc["sampling"]["min_tokens"]) == (48, 32)
    # the closed loop's partial-reply model, from the replies cut by the set's tokenizer: alpha shows by the end
    assert curve["partial"]["tokens"][:4] == [1, 2, 3, 4] and curve["partial"]["slope"][-1] > 0
