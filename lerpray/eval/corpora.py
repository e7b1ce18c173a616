"""Attribute-pole corpora, built at run time from text that package registries ship (the repo holds no text).

`build_corpora(out_dir, ["sentiment"], max_per_pole=500)` writes

    out_dir/sentiment.positive.train.jsonl     one {"text": ...} per line; file stem = anchor name
    out_dir/sentiment.positive.heldout.jsonl   held out: for scorers / classifiers, never for anchor training
    out_dir/corpora.json                       manifest: poles, sources, licences, counts (written last)

Built-in attributes (high pole / low pole) and where their text comes from (details in docs/data.md):

    sentiment   positive / negative   VADER human-rated snippets, mean valence >= +1.5 / <= -1.5
    humor       humorous / serious    Debian fortunes + pyjokes (fallback: PyPI pyjokes) / NYT editorial snippets
    simplicity  simple / complex      non-tweet VADER sentences with Flesch-Kincaid grade <= 4 / >= 12
    formality   formal / informal     NYT editorial snippets / tweets (both from the VADER archive)

Downloads are cached under $LERPRAY_CACHE/corpora (default ~/.cache/lerpray/corpora), so a rebuild takes seconds.
Your own data: a YAML/JSON config naming each attribute's high and low pole and a .jsonl/.txt file for each.
"""

from __future__ import annotations

import ast
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import yaml
from pydantic import BaseModel, Field

from lerpray.eval.scorers import flesch_kincaid_grade

__all__ = [
    "BUILTIN_POLES",
    "MANIFEST_NAME",
    "CorporaManifest",
    "CorpusError",
    "UserCorporaConfig",
    "build_corpora",
    "default_cache_dir",
    "load_manifest",
    "load_user_config",
    "read_pole",
    "read_texts",
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


class CorpusError(ValueError):
    """A corpus could not be built or read; the message says what to change."""


@dataclass(frozen=True)
class PoleTexts:
    texts: list[str]
    source: str
    licence: str
    notes: str = ""


# --- sources: registry packages, downloaded once into the cache --------------------------------------------------

VADER_VERSION = "3.3.2"
PYJOKES_VERSION = "0.8.3"
VADER_LICENCE = "MIT (vaderSentiment); snippets quoted from movie reviews, Amazon reviews, NYT editorials, tweets"
SENTIMENT_MIN_VALENCE = 1.5  # mean human rating on -4..+4; +-1.5 keeps clearly polar snippets only
SIMPLE_MAX_GRADE, COMPLEX_MIN_GRADE, MIN_WORDS = 4.0, 12.0, 6
FORTUNE_FILES = {  # Debian package -> fortune files that are mostly jokes rather than quotes or wisdom
    "fortunes-min": ("fortunes", "riddles"),
    "fortunes": ("humorists", "pets", "men-women", "food", "work", "kids", "sports", "computers"),
}
_VADER_FILES = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets",
                "tweets": "tweets"}  # fmt: skip


def _run(cmd: list[str], cwd: str | Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(f"`{' '.join(cmd)}` could not run: {exc}") from exc
    if proc.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def _cached(dest: Path, fill: Callable[[Path], None]) -> Path:
    """`dest` filled once by `fill(staging_dir)`; a `.complete` marker makes interrupted fills retry."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staging = Path(tmp) / "staging"
        staging.mkdir()
        fill(staging)
        (staging / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        try:
            staging.replace(dest)
        except OSError:  # another process filled `dest` first: keep theirs
            if not (dest / ".complete").exists():
                raise
    return dest


def _pip_download(spec: str, dest: Path, *, sdist: bool) -> Path:
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", *kind, spec, "-d", str(dest)])
    found = sorted(dest.glob("*.tar.gz" if sdist else "*.whl"))
    if not found:
        raise CorpusError(f"pip download {spec} produced no {'sdist' if sdist else 'wheel'} in {dest}")
    return found[0]


def _fill_vader(staging: Path) -> None:
    """Ground-truth files of hutto_ICWSM_2014.tar.gz, nested in the vaderSentiment sdist (not in the wheel)."""
    sdist = _pip_download(f"vaderSentiment=={VADER_VERSION}", staging / "download", sdist=True)
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith("/hutto_ICWSM_2014.tar.gz")), None)
        if member is None:
            raise CorpusError(f"{sdist.name} has no additional_resources/hutto_ICWSM_2014.tar.gz")
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for m in inner.getmembers():
            name = PurePosixPath(m.name).name  # write by base name only: no path from the archive is trusted
            if m.isfile() and name.endswith("_GroundTruth.txt"):
                (staging / name).write_bytes(inner.extractfile(m).read())
    shutil.rmtree(staging / "download")


def _clean(text: str) -> str:
    return " ".join(html.unescape(text).replace("''", '"').split())


def _vader(cache: Path, kind: str) -> list[tuple[float, str]]:
    """(mean human valence, text) of one VADER sub-corpus: movie, amazon, nyt or tweets."""
    root = _cached(cache / f"vaderSentiment-{VADER_VERSION}", _fill_vader)
    rows = []
    for line in (root / f"{_VADER_FILES[kind]}_GroundTruth.txt").read_text("utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and _clean(parts[2]):
            rows.append((float(parts[1]), _clean(parts[2])))
    return rows


def _debian(package: str, cache: Path) -> Path:
    """A Debian package unpacked without installing it: `apt-get download` (no root needed) + `dpkg -x`."""

    def fill(staging: Path) -> None:
        if not (shutil.which("apt-get") and shutil.which("dpkg")):
            raise CorpusError("apt-get and dpkg are needed for Debian sources and were not found")
        _run(["apt-get", "download", package], cwd=staging)
        debs = sorted(staging.glob(f"{package}_*.deb"))
        if not debs:
            raise CorpusError(f"apt-get download {package} produced no .deb")
        _run(["dpkg", "-x", str(debs[0]), str(staging)])
        debs[0].unlink()

    return _cached(cache / "debian" / package, fill)


def _fortunes(path: Path) -> list[str]:
    """Entries of a `%`-separated fortune file, attribution lines ("-- Groucho Marx") dropped, prose only."""
    entries = []
    for entry in re.split(r"^%$", path.read_text("utf-8", errors="replace"), flags=re.M):
        lines = []
        for line in entry.splitlines():
            if line.strip().startswith("--"):
                break
            lines.append(line)
        text = _clean(" ".join(lines))
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if 20 <= len(text) <= 300 and letters >= 0.85 * len(text):
            entries.append(text)
    return entries


def _joke_strings(source: str) -> list[str]:
    """String literals inside list literals of a pyjokes jokes_en.py, read with `ast` (never executed)."""
    return [
        _clean(node.value)
        for lst in ast.walk(ast.parse(source))
        if isinstance(lst, ast.List)
        for node in lst.elts
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _fill_pyjokes(staging: Path) -> None:
    wheel = _pip_download(f"pyjokes=={PYJOKES_VERSION}", staging / "download", sdist=False)
    with zipfile.ZipFile(wheel) as zf:
        (staging / "jokes_en.py").write_bytes(zf.read("pyjokes/jokes_en.py"))
    shutil.rmtree(staging / "download")


def _humorous(cache: Path) -> PoleTexts:
    try:
        texts = [t for pkg, files in FORTUNE_FILES.items() for f in files
                 for t in _fortunes(_debian(pkg, cache) / "usr/share/games/fortunes" / f)]  # fmt: skip
        jokes = _debian("python3-pyjokes", cache) / "usr/lib/python3/dist-packages/pyjokes/jokes_en.py"
        texts += _joke_strings(jokes.read_text("utf-8"))
        return PoleTexts(texts, "Debian fortunes-min, fortunes (joke files), python3-pyjokes",
                         "BSD (fortune-mod); pyjokes BSD-3-Clause, jokes CC-BY-SA-3.0")  # fmt: skip
    except (CorpusError, OSError) as exc:
        root = _cached(cache / f"pyjokes-{PYJOKES_VERSION}", _fill_pyjokes)
        texts = _joke_strings((root / "jokes_en.py").read_text("utf-8"))
        return PoleTexts(texts, f"PyPI pyjokes {PYJOKES_VERSION} (fallback)", "BSD-3-Clause; jokes CC-BY-SA-3.0",
                         notes=f"Debian fortunes unavailable, fell back to PyPI pyjokes: {exc}")  # fmt: skip


def _nyt(cache: Path) -> PoleTexts:
    texts = [t for _, t in _vader(cache, "nyt")]
    return PoleTexts(texts, f"vaderSentiment {VADER_VERSION} sdist: NYT editorial snippets", VADER_LICENCE)


def _sentiment(cache: Path) -> dict[str, PoleTexts]:
    rows = [row for kind in _VADER_FILES for row in _vader(cache, kind)]
    source = f"vaderSentiment {VADER_VERSION} sdist: hutto_ICWSM_2014, all four sub-corpora, mean valence "
    cut = SENTIMENT_MIN_VALENCE
    return {
        "positive": PoleTexts([t for v, t in rows if v >= cut], f"{source}>= +{cut}", VADER_LICENCE),
        "negative": PoleTexts([t for v, t in rows if v <= -cut], f"{source}<= -{cut}", VADER_LICENCE),
    }


def _simplicity(cache: Path) -> dict[str, PoleTexts]:
    """Sentences (>= 6 words, no URLs) of the movie, Amazon and NYT snippets, by Flesch-Kincaid grade."""
    sentences = [s for kind in ("movie", "amazon", "nyt") for _, text in _vader(cache, kind)
                 for s in re.split(r"(?<=[.!?])\s+", text)
                 if len(s.split()) >= MIN_WORDS and "http" not in s and "www." not in s]  # fmt: skip
    graded = [(flesch_kincaid_grade(s), s) for s in sentences]
    source = f"vaderSentiment {VADER_VERSION} sdist: movie/Amazon/NYT sentences with Flesch-Kincaid grade "
    return {
        "simple": PoleTexts(
            [s for g, s in graded if g <= SIMPLE_MAX_GRADE], f"{source}<= {SIMPLE_MAX_GRADE:g}", VADER_LICENCE
        ),
        "complex": PoleTexts(
            [s for g, s in graded if g >= COMPLEX_MIN_GRADE], f"{source}>= {COMPLEX_MIN_GRADE:g}", VADER_LICENCE
        ),
    }


def _formality(cache: Path) -> dict[str, PoleTexts]:
    tweets = [t for _, t in _vader(cache, "tweets")]
    tweet_source = f"vaderSentiment {VADER_VERSION} sdist: tweets"
    return {"formal": _nyt(cache), "informal": PoleTexts(tweets, tweet_source, VADER_LICENCE)}


_BUILDERS: dict[str, Callable[[Path], dict[str, PoleTexts]]] = {
    "sentiment": _sentiment,
    "humor": lambda cache: {"humorous": _humorous(cache), "serious": _nyt(cache)},
    "simplicity": _simplicity,
    "formality": _formality,
}


# --- building and reading --------------------------------------------------------------------------------------


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


class UserPole(BaseModel):
    name: str
    path: Path  # .jsonl ({"text": ...} per line) or .txt (one text per line); relative to the config file


class UserAttribute(BaseModel):
    high: UserPole
    low: UserPole
    source: str = "user data"
    licence: str = "unknown"


class UserCorporaConfig(BaseModel):
    """Your own poles, e.g. `attributes: {politeness: {high: {name: polite, path: polite.txt}, low: {...}}}`."""

    attributes: dict[str, UserAttribute]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LERPRAY_CACHE") or "~/.cache/lerpray").expanduser() / "corpora"


def load_user_config(path: str | Path) -> UserCorporaConfig:
    """Read a YAML/JSON pole config; relative file paths are taken relative to the config's folder."""
    path = Path(path)
    try:
        config = UserCorporaConfig.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise CorpusError(f"bad corpora config {path}: {exc}") from exc
    for attr in config.attributes.values():
        for pole in (attr.high, attr.low):
            pole.path = pole.path if pole.path.is_absolute() else path.parent / pole.path
    return config


def read_texts(path: str | Path) -> list[str]:
    """Texts of a .jsonl file (objects with a "text" field) or of any other file (one text per line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CorpusError(f"cannot read pole file {path}: {exc}") from exc
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(f'{path}:{number}: expected a JSON object with a "text" field ({exc})') from exc
    return texts


def split_texts(
    texts: Sequence[str], *, seed: int, limit: int | None, heldout_fraction: float
) -> tuple[list[str], list[str]]:
    """(train, heldout): dedupe, order by sha256(seed, text), keep `limit`, hold out a fraction (>= 1 if any).

    Ordering by hash makes the split independent of the order sources list their texts.
    """
    unique = list(dict.fromkeys(t for t in texts if t))
    ordered = sorted(unique, key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).hexdigest())
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


def _resolve_attributes(attributes: Sequence[str] | None, user: UserCorporaConfig | None) -> list[str]:
    known = set(BUILTIN_POLES) | set(user.attributes if user else ())
    names = list(attributes) if attributes is not None else sorted(user.attributes) if user else list(BUILTIN_POLES)
    for name in names:
        if name not in known:
            raise CorpusError(f"unknown attribute {name!r}: use one of {sorted(known)} or add it to a corpora config")
    return names


def _write_jsonl(path: Path, texts: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tmp.replace(path)


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
        _write_jsonl(out / files["train"], train)
        _write_jsonl(out / files["heldout"], heldout)
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
    for attribute in names:
        pair, poles = _collect(attribute, user, cache)
        manifest.attributes[attribute] = pair
        manifest.poles.update(_write_attribute(out, attribute, poles, seed, max_per_pole, heldout_fraction, balance))
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
    return read_texts(Path(corpora_dir) / manifest.poles[anchor].files[split])
