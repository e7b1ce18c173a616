"""Attribute-pole corpora, built at run time from text that package registries ship (the repo holds no text).

`build_corpora(out_dir, ["sentiment"], max_per_pole=500)` writes

    out_dir/sentiment.positive.train.jsonl     one {"text": ...} per line; file stem = anchor name
    out_dir/sentiment.positive.heldout.jsonl   held out: for scorers / classifiers, never for anchor training
    out_dir/corpora.json                       manifest: poles, sources, licences, counts (written last)

Built-in attributes (high pole / low pole) and where their text comes from (details in docs/data.md):

    sentiment   positive / negative   VADER human-rated snippets, mean valence >= +1.5 / <= -1.5
    humor       humorous / serious    Debian fortunes + pyjokes (fallback: PyPI pyjokes) / NYT editorial, neutral
                                      movie and Amazon snippets
    simplicity  simple / complex      movie/Amazon/NYT sentences with Flesch-Kincaid grade <= 4 / >= 12
    formality   formal / informal     NYT editorial snippets / tweets (both from the VADER archive)

Every text goes to at most one (attribute, pole) before the splits are drawn, a sentence cut from a snippet counting
as the snippet (lerpray/data/disjoint.py), so no anchor trains on text that another pole's anchor, classifier fit
or perplexity set uses. Each built-in attribute's poles are matched on the other attributes' proxies (tone, grade, source, length:
lerpray/data/matching.py), so that an anchor learns its attribute rather than what else its pole's text differs in.
Downloading and parsing the sources lives in lerpray/data/sources.py. Downloads are cached under
$LERPRAY_CACHE/corpora (default ~/.cache/lerpray/corpora), so a rebuild takes seconds.
Your own data: a YAML/JSON config naming each attribute's high and low pole and a .jsonl/.txt file for each
(lerpray/data/config.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from lerpray.data.config import UserCorporaConfig, load_user_config
from lerpray.data.disjoint import assign_disjoint
from lerpray.data.errors import CorpusError
from lerpray.data.matching import seeded_order
from lerpray.data.sources import PoleTexts, formality_poles, humor_poles, sentiment_poles, simplicity_poles
from lerpray.data.sources import fetch_debian as _debian
from lerpray.data.text_io import read_texts, write_jsonl

__all__ = [
    "BUILTIN_POLES",
    "MANIFEST_NAME",
    "CorporaManifest",
    "PolePair",
    "build_corpora",
    "default_cache_dir",
    "load_manifest",
    "read_pole",
    "split_texts",
]

MANIFEST_NAME = "corpora.json"
SPLITS = ("train", "heldout")
BUILTIN_POLES: dict[str, tuple[str, str]] = {  # attribute -> (high pole, low pole)
    "sentiment": ("positive", "negative"),
    "humor": ("humorous", "serious"),
    "simplicity": ("simple", "complex"),
    "formality": ("formal", "informal"),
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

_BUILDERS: dict[str, Callable[[Path], dict[str, PoleTexts]]] = {  # downloads and parsing: sources.py
    "sentiment": sentiment_poles,
    # `_debian` is looked up when the builder runs, so a test can replace corpora._debian (no apt-get there)
    "humor": lambda cache: humor_poles(cache, _debian),
    "simplicity": simplicity_poles,
    "formality": formality_poles,
}


class PolePair(BaseModel):
    high: str  # active at alpha = 1
    low: str  # active at alpha = 0


class PoleRecord(BaseModel):
    attribute: str
    pole: str
    source: str
    licence: str
    notes: str = ""
    files: dict[str, str]  # split -> file name inside the corpora folder
    counts: dict[str, int]  # "available" (unique texts), "train", "heldout"


class CorporaManifest(BaseModel):
    format_version: int = 1
    seed: int
    max_per_pole: int | None
    heldout_fraction: float
    balanced: bool
    attributes: dict[str, PolePair] = Field(default_factory=dict)
    poles: dict[str, PoleRecord] = Field(default_factory=dict)  # anchor name "attribute.pole" -> record
    created_at: str = ""


def default_cache_dir() -> Path:
    return Path(os.environ.get("LERPRAY_CACHE") or "~/.cache/lerpray").expanduser() / "corpora"


def split_texts(
    texts: Sequence[str], *, seed: int, limit: int | None, heldout_fraction: float
) -> tuple[list[str], list[str]]:
    """(train, heldout): dedupe, order by sha256(seed, text), keep `limit`, hold out a fraction (>= 1 if any).

    Ordering by hash makes the split independent of the order sources list their texts.
    """
    unique = list(dict.fromkeys(t for t in texts if t))
    ordered = seeded_order(unique, seed)
    chosen = ordered if limit is None else ordered[:limit]
    n_held = 0 if heldout_fraction <= 0 else max(0, min(len(chosen) - 1, max(1, round(heldout_fraction * len(chosen)))))
    return chosen[n_held:], chosen[:n_held]


def _collect(attribute: str, user: UserCorporaConfig | None, cache: Path) -> tuple[PolePair, dict[str, PoleTexts]]:
    if user is not None and attribute in user.attributes:
        spec = user.attributes[attribute]
        texts = {
            p.name: PoleTexts(read_texts(p.path), f"{spec.source}: {p.path}", spec.licence)
            for p in (spec.high, spec.low)
        }
        return PolePair(high=spec.high.name, low=spec.low.name), texts
    high, low = BUILTIN_POLES[attribute]
    return PolePair(high=high, low=low), _BUILDERS[attribute](cache)


def _owned(pole: PoleTexts, kept: list[str]) -> PoleTexts:
    """The pole with only the texts `assign_disjoint` gave it; the notes say how many went to other poles."""
    n = len(dict.fromkeys(t for t in pole.texts if t))
    note = f"{n - len(kept)} of {n} texts dropped as the same text as another pole's (lerpray/data/disjoint.py)."
    return PoleTexts(kept, pole.source, pole.licence, " ".join(filter(None, [pole.notes, note])))


def _resolve_attributes(attributes: Sequence[str] | None, user: UserCorporaConfig | None) -> list[str]:
    known = set(BUILTIN_POLES) | set(user.attributes if user else ())
    names = list(attributes) if attributes is not None else sorted(user.attributes) if user else list(BUILTIN_POLES)
    for name in names:
        if name not in known:
            raise CorpusError(f"unknown attribute {name!r}: use one of {sorted(known)} or add it to a corpora config")
    return names


def _write_attribute(
    out: Path,
    attribute: str,
    poles: dict[str, PoleTexts],
    seed: int,
    max_per_pole: int | None,
    heldout_fraction: float,
    balance: bool,
) -> dict[str, PoleRecord]:
    """Split and write both poles of one attribute; returns their manifest records."""
    for pole in poles:
        if not _NAME.match(pole) or not _NAME.match(attribute):
            raise CorpusError(f"names may use letters, digits, '_' and '-' only: {attribute}.{pole}")
    unique = {pole: list(dict.fromkeys(t for t in p.texts if t)) for pole, p in poles.items()}
    empty = [pole for pole, texts in unique.items() if not texts]
    if empty:
        raise CorpusError(f"{attribute}: poles {empty} have no texts; check their sources or files")
    limit = min(len(t) for t in unique.values()) if balance else None
    if max_per_pole is not None:
        limit = max_per_pole if limit is None else min(limit, max_per_pole)
    records = {}
    for pole, texts in unique.items():
        anchor = f"{attribute}.{pole}"
        train, heldout = split_texts(texts, seed=seed, limit=limit, heldout_fraction=heldout_fraction)
        files = {split: f"{anchor}.{split}.jsonl" for split in SPLITS}
        write_jsonl(out / files["train"], train)
        write_jsonl(out / files["heldout"], heldout)
        src = poles[pole]
        records[anchor] = PoleRecord(
            attribute=attribute, pole=pole, source=src.source, licence=src.licence, notes=src.notes,
            files=files, counts={"available": len(texts), "train": len(train), "heldout": len(heldout)},
        )  # fmt: skip
    return records


def build_corpora(
    out_dir: str | Path,
    attributes: Sequence[str] | None = None,
    *,
    max_per_pole: int | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    balance: bool = True,
    config: UserCorporaConfig | str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> CorporaManifest:
    """Build pole corpora into `out_dir` and return the manifest (also written there as corpora.json).

    attributes: built-in names and/or names from `config` (default: all of the config's, else all built-ins).
    max_per_pole: cap on texts per pole (train + heldout). balance: give both poles of an attribute the same count.
    """
    if max_per_pole is not None and max_per_pole < 1:
        raise CorpusError(f"max_per_pole must be >= 1 (or None for no cap), got {max_per_pole}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise CorpusError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    user = load_user_config(config) if isinstance(config, (str, Path)) else config
    names = _resolve_attributes(attributes, user)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # readers never see a manifest pointing at half-written files
    manifest = CorporaManifest(
        seed=seed, max_per_pole=max_per_pole, heldout_fraction=heldout_fraction, balanced=balance
    )
    collected = {attribute: _collect(attribute, user, cache) for attribute in names}
    owned = assign_disjoint(
        {f"{a}.{pole}": texts.texts for a, (_, poles) in collected.items() for pole, texts in poles.items()}, seed=seed
    )
    for attribute, (pair, poles) in collected.items():
        manifest.attributes[attribute] = pair
        mine = {pole: _owned(texts, owned[f"{attribute}.{pole}"]) for pole, texts in poles.items()}
        manifest.poles.update(_write_attribute(out, attribute, mine, seed, max_per_pole, heldout_fraction, balance))
    manifest.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2))
    tmp.replace(out / MANIFEST_NAME)
    return manifest


def load_manifest(corpora_dir: str | Path) -> CorporaManifest:
    path = Path(corpora_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CorpusError(
            f"no {MANIFEST_NAME} in {corpora_dir}: build it with jobs/build_corpora.py --out {corpora_dir}"
        )
    return CorporaManifest.model_validate_json(path.read_text())


def read_pole(corpora_dir: str | Path, anchor: str, split: str = "train") -> list[str]:
    """Texts of one pole (`anchor` = "attribute.pole") and split ("train" or "heldout") of a built corpus."""
    manifest = load_manifest(corpora_dir)
    if anchor not in manifest.poles:
        raise CorpusError(f"{corpora_dir} has no pole {anchor!r}; it has {sorted(manifest.poles)}")
    if split not in SPLITS:
        raise CorpusError(f"split must be one of {SPLITS}, got {split!r}")
    return read_texts(Path(corpora_dir) / manifest.poles[anchor].files[split], allow_empty=True)
