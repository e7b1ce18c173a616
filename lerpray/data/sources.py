"""Where the built-in attribute poles come from: registry packages, downloaded once into a cache, then parsed.

Each `*_poles(cache)` function returns pole name -> PoleTexts (texts + source + licence) for one built-in attribute;
`lerpray.data.corpora` splits and writes them. Sources (details and licences in docs/data.md):

    vaderSentiment sdist   hutto_ICWSM_2014.tar.gz: movie / Amazon / NYT / tweet snippets with mean human valence
    Debian packages        fortunes-min, fortunes, python3-pyjokes (apt-get download + dpkg -x, no root needed)
    PyPI pyjokes wheel     fallback for humor when apt-get or dpkg is missing or fails

Archives are read member by member and written by base name only: no path from an archive is trusted, and the
pyjokes source is parsed with `ast`, never executed.
"""

from __future__ import annotations

import ast
import html
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lerpray.data.errors import CorpusError
from lerpray.data.features import flesch_kincaid_grade, vader_compound
from lerpray.data.matching import COMPOUND_EDGES, GRADE_EDGES, VALENCE_EDGES, WORDS_EDGES, band, match_poles

__all__ = [
    "PYJOKES_VERSION",
    "VADER_VERSION",
    "PoleTexts",
    "fetch_debian",
    "formality_poles",
    "humor_poles",
    "sentiment_poles",
    "simplicity_poles",
]


@dataclass(frozen=True)
class PoleTexts:
    texts: list[str]
    source: str
    licence: str
    notes: str = ""


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


def fetch_debian(package: str, cache: Path) -> Path:
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


def _humorous(cache: Path, debian: Callable[[str, Path], Path]) -> PoleTexts:
    try:
        texts = [t for pkg, files in FORTUNE_FILES.items() for f in files
                 for t in _fortunes(debian(pkg, cache) / "usr/share/games/fortunes" / f)]  # fmt: skip
        jokes = debian("python3-pyjokes", cache) / "usr/lib/python3/dist-packages/pyjokes/jokes_en.py"
        texts += _joke_strings(jokes.read_text("utf-8"))
        return PoleTexts(texts, "Debian fortunes-min, fortunes (joke files), python3-pyjokes",
                         "BSD (fortune-mod); pyjokes BSD-3-Clause, jokes CC-BY-SA-3.0")  # fmt: skip
    except (CorpusError, OSError) as exc:
        root = _cached(cache / f"pyjokes-{PYJOKES_VERSION}", _fill_pyjokes)
        texts = _joke_strings((root / "jokes_en.py").read_text("utf-8"))
        return PoleTexts(texts, f"PyPI pyjokes {PYJOKES_VERSION} (fallback)", "BSD-3-Clause; jokes CC-BY-SA-3.0",
                         notes=f"Debian fortunes unavailable, fell back to PyPI pyjokes: {exc}")  # fmt: skip


def _nyt(cache: Path, half: int) -> dict[str, float]:
    """text -> valence for one of two disjoint halves (alternate lines) of the NYT editorial snippets: humor's serious
    pole draws on one, formality's formal pole on the other, so the two anchors never train on the same text."""
    valence = dict((t, v) for v, t in _vader(cache, "nyt"))  # ~70 snippets occur twice
    return {t: valence[t] for t in list(valence)[half::2]}


def _matched(
    high: tuple[str, dict[str, Hashable], str], low: tuple[str, dict[str, Hashable], str], on: str
) -> dict[str, PoleTexts]:
    """Both poles (name, text -> covariate cell, source) matched on their cells; the notes say what was kept.
    Licence: the VADER archive's (humor_poles puts the humorous pole's own back)."""
    kept = match_poles(high[1], low[1])
    return {
        name: PoleTexts(texts, source, VADER_LICENCE, notes=f"matched on {on}: kept {len(texts)} of {len(cells)}.")
        for (name, cells, source), texts in zip((high, low), kept, strict=True)
    }  # fmt: skip


def _grade(text: str) -> int:
    return band(flesch_kincaid_grade(text), GRADE_EDGES)


def sentiment_poles(cache: Path) -> dict[str, PoleTexts]:
    """Snippets of all four sub-corpora by human valence, matched on sub-corpus and reading grade."""
    rows = [(kind, v, t) for kind in _VADER_FILES for v, t in _vader(cache, kind)]
    cut = SENTIMENT_MIN_VALENCE
    source = f"vaderSentiment {VADER_VERSION} sdist: hutto_ICWSM_2014, all four sub-corpora, mean valence "
    positive = {t: (kind, _grade(t)) for kind, v, t in rows if v >= cut}
    negative = {t: (kind, _grade(t)) for kind, v, t in rows if v <= -cut}
    return _matched(("positive", positive, f"{source}>= +{cut}"), ("negative", negative, f"{source}<= -{cut}"),
                    "sub-corpus and Flesch-Kincaid grade band")  # fmt: skip


def simplicity_poles(cache: Path) -> dict[str, PoleTexts]:
    """Sentences (>= 6 words, no URLs) of the movie, Amazon and NYT snippets by Flesch-Kincaid grade, matched on
    sub-corpus and VADER tone (simple sentences are otherwise less positive than complex ones)."""
    sentences = list(dict.fromkeys(
        (kind, s) for kind in ("movie", "amazon", "nyt") for _, text in _vader(cache, kind)
        for s in re.split(r"(?<=[.!?])\s+", text)
        if len(s.split()) >= MIN_WORDS and "http" not in s and "www." not in s
    ))  # fmt: skip
    tones = vader_compound([s for _, s in sentences])
    graded = [(flesch_kincaid_grade(s), (kind, band(c, COMPOUND_EDGES)), s)
              for (kind, s), c in zip(sentences, tones, strict=True)]  # fmt: skip
    source = f"vaderSentiment {VADER_VERSION} sdist: movie/Amazon/NYT sentences with Flesch-Kincaid grade "
    simple = {s: cell for g, cell, s in graded if g <= SIMPLE_MAX_GRADE}
    complex_ = {s: cell for g, cell, s in graded if g >= COMPLEX_MIN_GRADE}
    return _matched(("simple", simple, f"{source}<= {SIMPLE_MAX_GRADE:g}"),
                    ("complex", complex_, f"{source}>= {COMPLEX_MIN_GRADE:g}"),
                    "sub-corpus and VADER tone band")  # fmt: skip


def formality_poles(cache: Path) -> dict[str, PoleTexts]:
    """NYT editorial snippets vs tweets, matched on human valence and length (tweets are otherwise more upbeat)."""

    def cells(valence: dict[str, float]) -> dict[str, Hashable]:
        return {t: (band(v, VALENCE_EDGES), band(len(t.split()), WORDS_EDGES)) for t, v in valence.items()}

    source = f"vaderSentiment {VADER_VERSION} sdist: "
    formal = ("formal", cells(_nyt(cache, 0)), f"{source}NYT editorial snippets, even lines")
    informal = ("informal", cells({t: v for v, t in _vader(cache, "tweets")}), f"{source}tweets")
    return _matched(formal, informal, "human valence band and length band")


def humor_poles(cache: Path, debian: Callable[[str, Path], Path] = fetch_debian) -> dict[str, PoleTexts]:
    """Humorous: Debian fortunes + pyjokes (PyPI pyjokes if Debian fails). Serious: NYT editorial snippets (the half
    formality does not use) and movie and Amazon snippets of neutral valence (sentiment's poles never use those),
    like the news side of jokes-vs-news humor data; both matched on VADER tone and reading grade."""
    humorous = _humorous(cache, debian)
    cut = SENTIMENT_MIN_VALENCE
    serious = list(_nyt(cache, 1)) + [t for kind in ("movie", "amazon") for v, t in _vader(cache, kind) if abs(v) < cut]

    def cells(texts: list[str]) -> dict[str, Hashable]:
        texts = [t for t in dict.fromkeys(texts) if any(c.isalpha() for c in t)]  # "..." has no grade
        return {t: (band(c, COMPOUND_EDGES), _grade(t)) for t, c in zip(texts, vader_compound(texts), strict=True)}

    serious_source = (f"vaderSentiment {VADER_VERSION} sdist: NYT editorial snippets (odd lines), movie and Amazon "
                      f"snippets with |valence| < {cut}")  # fmt: skip
    poles = _matched(("humorous", cells(humorous.texts), humorous.source), ("serious", cells(serious), serious_source),
                     "VADER tone band and Flesch-Kincaid grade band")  # fmt: skip
    kept = poles["humorous"]
    notes = " ".join(filter(None, [kept.notes, humorous.notes]))  # the fallback's note, if it was taken
    poles["humorous"] = PoleTexts(kept.texts, humorous.source, humorous.licence, notes)
    return poles
