"""What one `lerpray quickstart` does, as flat values: the command-line flags checked and the size's defaults
filled in (the real run on SmolLM2-135M, or the CI-sized --tiny run)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from lerpray.quickstart.steps import PROMPTS

__all__ = ["DEFAULT_WORKDIR", "Plan", "plan_from_args"]

DEFAULT_WORKDIR = Path("runs/quickstart")


@dataclass(frozen=True)
class Plan:
    """What one quickstart does, as flat values (defaults differ between the real and the --tiny run)."""

    workdir: Path
    tiny: bool = False
    fresh: bool = False
    model: str | None = None  # a local HF folder; None = the bundled SmolLM2 (or the tiny Llama with --tiny)
    steps: int = 60  # optimizer steps per anchor
    port: int | None = None  # None = a free port
    prompts: tuple[str, ...] = PROMPTS
    samples: int = 8  # seeds per prompt and alpha: 12 prompts x 8 = 96 generations per alpha
    max_tokens: int = 32
    target_prompts: int = 8  # the target demo: held-out openings per target (lerpray/quickstart/target_demo.py)
    target_samples: int = 4  # and seeds per prompt: 8 x 4 = 32 replies per target
    max_per_pole: int | None = 2000  # corpus texts per pole
    cpus: int = 2
    verbose: bool = False  # forward Ray worker and replica logs


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Check the flags and fill in the defaults of the chosen size; ValueError says which flag to change."""
    tiny = args.tiny
    prompts = args.prompts if args.prompts is not None else (2 if tiny else len(PROMPTS))
    if not 1 <= prompts <= len(PROMPTS):
        raise ValueError(f"--prompts must be in 1..{len(PROMPTS)}, got {prompts}")
    for flag, value in (("--steps", args.steps), ("--samples", args.samples), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.model is not None and not Path(args.model).expanduser().is_dir():
        raise ValueError(f"--model {args.model}: no such folder; pass a local Hugging Face model folder")
    if args.model is not None and tiny:
        raise ValueError("--tiny builds its own model; drop --model or --tiny")
    default_dir = DEFAULT_WORKDIR.with_name(DEFAULT_WORKDIR.name + "-tiny") if tiny else DEFAULT_WORKDIR
    return Plan(
        workdir=args.workdir or default_dir, tiny=tiny, fresh=args.fresh,
        model=str(Path(args.model).expanduser().absolute()) if args.model else None,
        steps=args.steps or (4 if tiny else 60), port=args.port, prompts=PROMPTS[:prompts],
        samples=args.samples or (1 if tiny else 8), max_tokens=args.max_tokens or (8 if tiny else 32),
        target_prompts=2 if tiny else 8, target_samples=1 if tiny else 4,
        max_per_pole=None if tiny else 2000, cpus=_cpus(), verbose=args.verbose,
    )


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2
