"""Typed sweep configuration (`lerpray eval sweep CONFIG`), validated at the edge, and the prompt set.

A sweep is one or more grids of mixes (alpha per attribute, lambda between two attributes, or a lambda simplex over
three), run on every prompt with several samples each, scored by every scorer. See jobs/configs/eval_sweep.yaml
for a commented example. Relative paths are taken relative to the directory the sweep runs from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lerpray.configs import BaseModelOverride, SamplingSettings, StrictModel, read_yaml, validate_config

if TYPE_CHECKING:
    from lerpray.eval.scorers import Scorer

__all__ = [
    "BUILTIN_PROMPTS",
    "DEFAULT_ALPHAS",
    "GridConfig",
    "PerplexityConfig",
    "PromptConfig",
    "ScorerConfig",
    "SweepConfig",
    "SweepConfigError",
    "load_prompts",
    "load_sweep_config",
]

DEFAULT_ALPHAS = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # the paper's range, extrapolation included


class SweepConfigError(ValueError):
    """A sweep config or prompt file that cannot be used; the message says what to change."""


class GridConfig(StrictModel):
    """One grid of mixes. alpha: each attribute swept alone (lambda 1); lambda: two attributes, lambda of the first
    from `lambdas` (the second gets 1 - lambda); simplex: three attributes, lambdas in multiples of 1/steps."""

    kind: Literal["alpha", "lambda", "simplex"] = "alpha"
    attributes: list[str] | None = None  # alpha: default every attribute of the anchor set
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    lambdas: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    steps: int = Field(4, ge=1)
    fixed_alpha: dict[str, float] = Field(default_factory=dict)  # lambda/simplex grids; default 1.0 (high pole)

    @model_validator(mode="after")
    def _arity(self) -> GridConfig:
        need = {"lambda": 2, "simplex": 3}.get(self.kind)
        if need is not None and (self.attributes is None or len(set(self.attributes)) != need):
            raise ValueError(f"a {self.kind} grid needs exactly {need} distinct attributes, got {self.attributes}")
        if not self.alphas or not self.lambdas:
            raise ValueError("alphas and lambdas must not be empty")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lambdas):
            raise ValueError(f"lambdas must lie in [0, 1] (lambda stays on the simplex), got {self.lambdas}")
        return self


class PromptConfig(StrictModel):
    file: Path | None = None  # .jsonl ({"text": ...} per line) or one prompt per line; default: BUILTIN_PROMPTS
    limit: int | None = Field(None, ge=1)  # first N prompts only
    samples: int = Field(2, ge=1)  # generations per prompt and mix; sample s uses seed `seed + s` for every mix
    seed: int = 0
    chat: bool = False  # send each prompt as a user message through the tokenizer's chat template


class ScorerConfig(StrictModel):
    """A scorer ("vader", "textblob", "fkgl" or a saved classifier .json) and, optionally, the attribute it
    measures when that differs from the scorer's own (e.g. fkgl for an attribute named "readability")."""

    spec: str
    attribute: str | None = None

    def load(self) -> Scorer:
        from lerpray.eval.scorers import get_scorer

        scorer = get_scorer(self.spec)
        if self.attribute is not None:
            scorer.attribute = self.attribute  # on this instance only
        return scorer


class PerplexityConfig(StrictModel):
    """Held-out text for perplexity per mix: a file, or the held-out split of a built corpora folder."""

    texts: Path | None = None
    corpora: Path | None = None  # every pole's held-out split, in equal shares
    max_texts: int = Field(64, ge=1)
    max_length: int = Field(128, ge=2)  # tokens per text (longer texts are cut)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> PerplexityConfig:
        if (self.texts is None) == (self.corpora is None):
            raise ValueError("perplexity needs exactly one of `texts` (a file) or `corpora` (a built corpora folder)")
        return self


class SweepConfig(StrictModel):
    out: Path  # folder for generations.csv, perplexity.csv, the plots and report.md
    anchors: str | None = None  # anchor-set URI: run in-process (perplexity too, even with `server`)
    base_model: BaseModelOverride = None
    device: str = "cpu"
    batch_size: int = Field(32, ge=1)  # in-process: rows decoded together (rows may all have different mixes)
    server: str | None = None  # e.g. http://127.0.0.1:8000: generate through a running lerpray server instead
    server_model: str | None = None  # the model id the server lists (default: the server's only model)
    concurrency: int = Field(8, ge=1)  # requests in flight against the server
    server_api_key_env: str | None = None  # env var holding the server's API key (sent as a Bearer token)
    request_timeout_s: float = Field(300.0, gt=0)
    grids: list[GridConfig] = Field(default_factory=lambda: [GridConfig()], min_length=1)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    scorers: list[str | ScorerConfig] = Field(default_factory=lambda: ["vader", "fkgl"], min_length=1)
    perplexity: PerplexityConfig | None = None

    @model_validator(mode="after")
    def _backend(self) -> SweepConfig:
        if self.anchors is None and self.server is None:
            raise ValueError("give `anchors` (run in-process) or `server` (a running lerpray server's URL)")
        return self

    def server_api_key(self) -> str | None:
        if self.server_api_key_env is None:
            return None
        key = os.environ.get(self.server_api_key_env)
        if not key:
            raise SweepConfigError(f"server_api_key_env names {self.server_api_key_env}, which is not set; export it")
        return key

    def scorer_configs(self) -> list[ScorerConfig]:
        return [ScorerConfig(spec=s) if isinstance(s, str) else s for s in self.scorers]


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a sweep YAML/JSON file (every problem listed with its field path). `overrides` (the
    command line's --out, --anchors, --server) replace the file's fields before it is checked, so a file without
    `anchors` is valid with --server."""
    raw = read_yaml(path, "sweep config", SweepConfigError) or {}
    if isinstance(raw, dict):  # anything else is refused below as "must be a mapping"
        raw = {**raw, **(overrides or {})}
    return validate_config(SweepConfig, raw, str(path), SweepConfigError)


def load_prompts(config: PromptConfig) -> list[str]:
    """The sweep's prompts: from `config.file`, else BUILTIN_PROMPTS; cut to `config.limit`."""
    if config.file is None:
        prompts = list(BUILTIN_PROMPTS)
    else:
        from lerpray.data.errors import DataError
        from lerpray.data.text_io import read_texts

        try:
            prompts = read_texts(config.file, allow_empty=True)
        except DataError as exc:
            raise SweepConfigError(f"prompts.file: {exc}") from exc
    if not prompts:
        raise SweepConfigError(f"prompts.file {config.file} holds no prompts; put one prompt per line")
    return prompts[: config.limit] if config.limit else prompts


# Neutral, open-ended prompts written for lerpray (no third-party text): no sentiment, register or humour is asked
# for, so what the anchors add shows in the answers. They read as instructions and as openings of a text.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "Describe a walk through a city park in the morning.",
    "Tell me about the last meal you cooked.",
    "Write a few sentences about a train journey.",
    "Describe the town where you grew up.",
    "Tell me about a book you read recently.",
    "Write a short note to a neighbour about the weekend.",
    "Describe the weather today.",
    "Tell me about your job.",
    "Write a few sentences about a visit to the dentist.",
    "Describe a new phone you bought.",
    "Tell me about a film you watched last week.",
    "Write a short review of a local cafe.",
    "Describe your daily commute.",
    "Tell me about a concert you went to.",
    "Write a few sentences about learning to swim.",
    "Describe a hotel room you stayed in.",
    "Tell me about your favourite season.",
    "Write a short message to a colleague about a meeting.",
    "Describe a market on a Saturday.",
    "Tell me about a pet you know.",
    "Write a few sentences about moving to a new flat.",
    "Describe the view from a window.",
    "Tell me about a game you played as a child.",
    "Write a short update for a family group chat.",
    "Describe a bicycle ride in the countryside.",
    "Tell me about a museum you visited.",
    "Write a few sentences about a rainy afternoon.",
    "Describe a restaurant you ate at.",
    "Tell me about the last time you went shopping.",
    "Write a short paragraph about a garden.",
    "Describe a long drive on a motorway.",
    "Tell me about a teacher you remember.",
    "Write a few sentences about a birthday party.",
    "Describe an office on a Monday morning.",
    "Tell me about a hobby you picked up.",
    "Write a short review of a laptop.",
    "Describe a day at the beach.",
    "Tell me about a flight you took.",
    "Write a few sentences about a football match.",
    "Describe a library.",
    "Tell me about a neighbour.",
    "Write a short account of a job interview.",
    "Describe a kitchen.",
    "Tell me about a holiday you took.",
    "Write a few sentences about a new year.",
    "Describe a bus stop at night.",
    "Tell me about a recipe you tried.",
    "Write a short note about a package that arrived.",
    "Describe a mountain hike.",
    "Tell me about a podcast you listened to.",
    "Write a few sentences about a school trip.",
    "Describe a supermarket queue.",
    "Tell me about a friend you met recently.",
    "Write a short review of a pair of shoes.",
    "Describe a snowy street.",
    "Tell me about the news this week.",
    "Write a few sentences about a wedding.",
    "Describe a village festival.",
    "Tell me about a software update.",
    "Write a short account of a power cut.",
    "Describe a waiting room.",
    "Tell me about a river you know.",
    "Write a few sentences about a Sunday.",
    "Describe the first day at a new job.",
    "Tell me about a song you heard.",
    "Write a short description of a car.",
    "Describe a bakery.",
    "Tell me about a gift you received.",
)
