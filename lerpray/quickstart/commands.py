"""`lerpray quickstart`: the whole pipeline on this machine with one command (what happens: docs/quickstart.md).

    lerpray quickstart            # bundled SmolLM2-135M: ~8 min on 2 idle cores, ~1.5 min when it reuses its work
    lerpray quickstart --tiny     # a tiny random Llama, a few steps, no download: the CI-sized run
    lerpray quickstart --fresh    # rebuild the corpus and retrain the anchors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lerpray.quickstart.config import DEFAULT_WORKDIR, plan_from_args
from lerpray.quickstart.steps import PROMPTS

__all__ = ["add_parsers"]


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="train, publish and serve two sentiment anchors on this machine, then query every mix",
        description="The whole pipeline on one machine: a local Ray, a sentiment corpus, two LoRA anchors of the "
        "bundled SmolLM2-135M trained in parallel, a local anchor store, the Serve app on 127.0.0.1, requests at "
        "alpha 0..1 scored with VADER. A second run reuses what the first built.")
    parser.add_argument("--workdir", type=Path, default=None,
                        help=f"where everything is built (default {DEFAULT_WORKDIR}, or {DEFAULT_WORKDIR}-tiny)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the corpus and retrain the anchors")
    parser.add_argument("--model", default=None, help="a local Hugging Face model folder instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per anchor (default 60; tiny 4)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama and a built-in corpus: about a "
                        "minute, no download, meaningless text (the CI-sized run)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--prompts", type=int, default=None, help=f"prompts per alpha, 1..{len(PROMPTS)} "
                        f"(default {len(PROMPTS)}; tiny 2)")
    parser.add_argument("--samples", type=int, default=None, help="seeds per prompt and alpha (default 8; tiny 1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per generation (default 32; tiny 8)")
    parser.add_argument("--verbose", action="store_true", help="show the Ray workers' and the replica's logs")
    parser.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from lerpray.quickstart.pipeline import run_quickstart
    from lerpray.train import TrainingFailed

    plan = plan_from_args(args)
    print(f"lerpray quickstart: {'tiny run' if plan.tiny else 'SmolLM2-135M'}, work dir {plan.workdir}", flush=True)
    try:
        run_quickstart(plan)
    except TrainingFailed as err:
        print(f"lerpray quickstart: training failed: {err}", file=sys.stderr)
        return 1
    return 0
