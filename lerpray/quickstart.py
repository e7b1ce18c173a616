"""`lerpray quickstart`: the whole pipeline on this machine with one command (what happens: docs/quickstart.md).

    lerpray quickstart            # bundled SmolLM2-135M: ~8 min on 2 idle cores, ~1.5 min when it reuses its work
    lerpray quickstart --tiny     # a tiny random Llama, a few steps, no download: the CI-sized run
    lerpray quickstart --fresh    # rebuild the corpus and retrain the anchors

It reads top to bottom: parse -> local Ray -> corpora -> base model -> train (two anchors at once on Ray Train)
-> publish (verify the set) -> serve (Ray Serve on 127.0.0.1) -> requests (alpha 0..1, batched together)
-> summary -> shutdown. Everything it builds lives in --workdir; a second run reuses the corpus, and the anchor set
when its manifest verifies and it was trained with the same config and data (run id = their hash).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from lerpray.quickstart_steps import (
    ALPHAS,
    ANCHORS,
    PROMPTS,
    Generation,
    Stages,
    Trend,
    build_corpus,
    clear_built,
    corpora_reusable,
    free_port,
    generation_lines,
    reusable_set,
    send_requests,
    start_server,
    training_config,
    trend,
)

__all__ = ["Plan", "QuickstartReport", "add_parsers", "plan_from_args", "run_quickstart"]

STAGES = ("ray", "corpora", "base model", "train", "publish", "serve", "requests", "summary", "shutdown")
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
    samples: int = 2  # seeds per prompt and alpha
    max_tokens: int = 32
    max_per_pole: int | None = 2000  # corpus texts per pole
    cpus: int = 2
    verbose: bool = False  # forward Ray worker and replica logs


@dataclass
class QuickstartReport:
    workdir: Path
    url: str = ""
    corpora_reused: bool = False
    anchors_reused: bool = False
    manifest_version: int = 0
    problems: list[str] = field(default_factory=list)  # verification of the published set; [] = good
    generations: list[Generation] = field(default_factory=list)
    trend: Trend = field(default_factory=Trend)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    total_s: float = 0.0


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
    parser.add_argument("--samples", type=int, default=None, help="seeds per prompt and alpha (default 2; tiny 1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per generation (default 32; tiny 8)")
    parser.add_argument("--verbose", action="store_true", help="show the Ray workers' and the replica's logs")
    parser.set_defaults(func=_quickstart)


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
        samples=args.samples or (1 if tiny else 2), max_tokens=args.max_tokens or (8 if tiny else 32),
        max_per_pole=None if tiny else 2000, cpus=_cpus(), verbose=args.verbose,
    )


def run_quickstart(plan: Plan, stream=None) -> QuickstartReport:
    """The pipeline; Serve and Ray are shut down on the way out, also after an error."""
    from lerpray.local_cluster import local_ray

    stages = Stages(STAGES, stream)
    report, started = QuickstartReport(plan.workdir), time.monotonic()
    if plan.fresh:
        stages.say(f"--fresh: removed {clear_built(plan.workdir) or 'nothing'} from {plan.workdir}")
    plan.workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as running:
        with stages.stage("ray", f"starting a local Ray cluster ({plan.cpus} CPUs, no dashboard)"):
            running.enter_context(local_ray(num_cpus=plan.cpus, log_to_driver=plan.verbose))
        corpora = _corpora(plan, stages, report)
        base_model = _base_model(plan, stages)
        config = training_config(corpora=corpora, workdir=plan.workdir, base_model=base_model, steps=plan.steps,
                                 tiny=plan.tiny, cpus=plan.cpus)
        _train(config, stages, report)
        _publish(plan.workdir / "anchors", stages, report)
        with stages.stage("serve", "starting Ray Serve on 127.0.0.1 with the anchor set"):
            running.callback(_stop_serve)
            batch = len(plan.prompts) * plan.samples * len(ALPHAS)
            report.url = start_server(plan.workdir / "anchors", base_model=base_model, port=plan.port or free_port(),
                                      cpus=plan.cpus, max_batch_size=batch)
            stages.note("serve", f"{report.url}/v1")
        alphas = ", ".join(f"{a:g}" for a in ALPHAS)
        with stages.stage("requests", f"{len(plan.prompts)} prompts x {plan.samples} seeds at alpha {alphas}, at once"):
            report.generations = send_requests(report.url, plan.prompts, plan.samples, plan.max_tokens)
        with stages.stage("summary", "each generation's VADER score, and the mean per alpha"):
            report.trend = trend(report.generations)
            for line in generation_lines(report.generations, report.trend.means):
                stages.say(line)
            stages.say(report.trend.line())
        with stages.stage("shutdown", "stopping Serve and Ray"):
            running.close()
    report.seconds, report.total_s = dict(stages.seconds), time.monotonic() - started
    stages.say("\ntimes: " + ", ".join(f"{name} {s:.0f} s" for name, s in report.seconds.items())
               + f"; total {report.total_s:.0f} s")
    return report


def _corpora(plan: Plan, stages: Stages, report: QuickstartReport) -> Path:
    out = plan.workdir / "corpora"
    source = "built-in sentences" if plan.tiny else "the VADER archive (vaderSentiment sdist from PyPI)"
    with stages.stage("corpora", f"sentiment poles from {source} -> {out}"):
        kw = {"tiny": plan.tiny, "max_per_pole": plan.max_per_pole, "seed": 0}
        report.corpora_reused = corpora_reusable(out, **kw)
        if report.corpora_reused:
            stages.note("corpora", "reused")
        else:
            counts = build_corpus(out, **kw)
            stages.note("corpora", ", ".join(f"{name}: {n} texts" for name, n in counts.items()))
    return out


def _base_model(plan: Plan, stages: Stages) -> str | None:
    """The base model's path for the training config (None: the bundled SmolLM2, which the manifest names)."""
    with stages.stage("base model", "the model both anchors adapt"):
        if plan.tiny:
            from lerpray.testing import save_tiny_base_model

            folder = plan.workdir / "tiny-model"
            if not (folder / "config.json").is_file():
                save_tiny_base_model(folder)
            stages.note("base model", f"tiny random Llama at {folder}")
            return str(folder.absolute())
        if plan.model is not None:
            stages.note("base model", plan.model)
            return plan.model
        from lerpray.model.base import bundled_model_dir

        # Convert the bundled GGUF here, once, rather than in both training workers at the same time.
        stages.note("base model", f"bundled SmolLM2-135M-Instruct, cached at {bundled_model_dir()}")
        return None


def _train(config, stages: Stages, report: QuickstartReport) -> None:
    anchors = Path(config.output)
    report.anchors_reused, why = reusable_set(anchors, config.run_id)
    steps = config.anchors[0].training.max_steps
    with stages.stage("train", f"{' and '.join(ANCHORS)} in parallel on Ray Train, {steps} steps each"):
        if report.anchors_reused:
            stages.note("train", f"reused: {why}")
            return
        from lerpray.train import train_anchors

        stages.say(f"      training ({why})")
        outcome = train_anchors(config, overwrite=True, show_progress=True)
        for name, m in outcome.metrics.items():
            loss = m.get("loss_mean_last_10")  # None when a resumed run had no step left to train
            stages.say(f"      {name}: {m['step']} steps, loss (mean of the last 10) "
                       f"{'-' if loss is None else f'{loss:.3f}'}, {m['tokens_per_s']:.0f} tokens/s")


def _publish(anchors: Path, stages: Stages, report: QuickstartReport) -> None:
    from lerpray.anchors import open_store, read_manifest, verify_anchor_set

    with stages.stage("publish", f"the anchor set in the local store {anchors} (PEFT folders + manifest)"):
        manifest = read_manifest(open_store(anchors))
        report.manifest_version, report.problems = manifest.version, verify_anchor_set(anchors)
        for entry in manifest.anchors:
            alpha = 1 if manifest.role(entry) == "high" else 0
            stages.say(f"      {entry.name}: the alpha={alpha} pole, r={entry.rank}, lora_alpha={entry.lora_alpha:g}, "
                       f"{len(entry.files)} files")
        if report.problems:
            raise ValueError(f"the anchor set at {anchors} does not verify: {report.problems}; rerun with --fresh")
        stages.note("publish", f"version {manifest.version}, every sha256 verified")


def _stop_serve() -> None:
    from ray import serve

    serve.shutdown()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def _quickstart(args: argparse.Namespace) -> int:
    from lerpray.train import TrainingFailed

    plan = plan_from_args(args)
    print(f"lerpray quickstart: {'tiny run' if plan.tiny else 'SmolLM2-135M'}, work dir {plan.workdir}", flush=True)
    try:
        run_quickstart(plan)
    except TrainingFailed as err:
        print(f"lerpray quickstart: training failed: {err}", file=sys.stderr)
        return 1
    return 0
