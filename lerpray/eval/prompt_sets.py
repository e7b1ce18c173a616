"""Prompt sets for calibration and target measurements: the openings shipped with lerpray, or a user's file.

The shipped set (lerpray/eval/prompts/openings.jsonl, described in the README beside it) holds 312 openings of a
text in 13 domains (reviews, places, travel, work, home, food, nature, sport, school, tech, arts, stories,
messages), 24 each, of several lengths, interleaved so that every split below holds every domain in equal shares.
They are completion prompts: a model continues them as they are, base and instruct models alike, so no chat
template is needed (instruction prompts need one: `chat=True` sends each as a user message).

Splits by index: "even" (calibration), "odd" (held out for measuring targets), "all". `domains` keeps only the
prompts of those domains (a held-out domain: calibrate without it, measure on it alone).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPENINGS", "PromptSet", "load_prompt_set"]

OPENINGS = Path(__file__).parent / "prompts" / "openings.jsonl"
OPENINGS_LICENCE = "Apache-2.0 (written for lerpray; no third-party text)"
SPLITS = ("even", "odd", "all")


@dataclass(frozen=True)
class PromptSet:
    texts: tuple[str, ...]  # [P]
    domains: tuple[str, ...]  # [P] a domain per prompt ("" when the file names none)
    source: str  # where they came from and which of them, e.g. "lerpray openings (shipped), even indices"
    licence: str | None = None

    def provenance(self, *, chat: bool) -> dict:
        """What a calibration file records about its prompts."""
        return {"source": self.source, "licence": self.licence, "count": len(self.texts), "chat": chat,
                "domains": dict(sorted(Counter(d for d in self.domains if d).items())),
                "sha256": hashlib.sha256("\n".join(self.texts).encode()).hexdigest()}  # fmt: skip


def load_prompt_set(
    file: str | Path | None = None, split: str = "even", domains: Sequence[str] | None = None
) -> PromptSet:
    """The prompts of `split` (by index in the file) within `domains`; default the shipped openings.

    A .jsonl file gives {"text": ..., "domain": ...} per line (domain optional); any other file one prompt per line.
    """
    from lerpray.eval.config import SweepConfigError

    if split not in SPLITS:
        raise SweepConfigError(f"prompt split must be one of {list(SPLITS)}, got {split!r}")
    path = Path(file) if file is not None else OPENINGS
    if not path.is_file():
        raise SweepConfigError(f"prompt file {path} does not exist; give a file with one prompt per line or JSONL")
    rows = _read(path)
    picked = {"even": rows[0::2], "odd": rows[1::2], "all": rows}[split]  # by index in the file, then domains
    if domains:
        known = sorted({d for _, d in rows})
        missing = sorted(set(domains) - set(known))
        if missing:
            raise SweepConfigError(f"{path} has no prompts in domains {missing}; its domains are {known}")
        picked = [(t, d) for t, d in picked if d in set(domains)]
    if not picked:
        raise SweepConfigError(f"{path} holds no prompts in the {split} split; add prompts or choose --split all")
    name = "lerpray openings (shipped)" if file is None else str(file)
    where = f"{name}, {split} indices" + (f", domains {','.join(domains)}" if domains else "")
    texts, doms = zip(*picked, strict=True)
    return PromptSet(tuple(texts), tuple(doms), where, OPENINGS_LICENCE if file is None else None)


def _read(path: Path) -> list[tuple[str, str]]:
    from lerpray.eval.config import SweepConfigError

    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix not in (".jsonl", ".ndjson", ".json"):
        return [(line.strip(), "") for line in lines]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            text = obj["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SweepConfigError(f'{path} line {n}: expected {{"text": ..., "domain": ...}}') from None
        if isinstance(text, str) and text.strip():
            rows.append((text.strip(), str(obj.get("domain") or "")))
    return rows
