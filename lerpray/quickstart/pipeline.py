"""The `lerpray quickstart` pipeline (what happens: docs/quickstart.md); lerpray/quickstart/commands.py runs it.

It reads top to bottom: parse -> local Ray -> corpora -> base model -> train (two anchors at once on Ray Train)
-> publish (verify the set) -> serve (Ray Serve on 127.0.0.1) -> requests (alpha 0..1, batched together)
-> summary -> targets (calibrate from those requests, ask three targets on held-out prompts) -> shutdown.
Everything it builds lives in --workdir; a second run reuses the corpus, and the anchor set when its manifest
verifies and it was trained with the same config and data (run id = their hash).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from lerpray.quickstart.config import Plan
from lerpray.quickstart.steps import (
    ALPHAS,
    ANCHORS,
    Generation,
    Stages,
    build_corpus,
    clear_built,
    corpora_reusable,
    free_port,
    reusable_set,
    send_requests,
    start_server,
    stop_server,
    training_config,
)
from lerpray.quickstart.summary import Trend, side_by_side, trend, write_outputs
from lerpray.quickstart.target_demo import LEVELS as TARGET_LEVELS
from lerpray.quickstart.target_demo import run_target_demo

__all__ = ["STAGES", "QuickstartReport", "run_quickstart"]

MAX_BATCH = 64  # engine rows per decode step: big batches are what makes many samples per alpha cheap on a CPU
STAGES = ("ray", "corpora", "base model", "train", "publish", "serve", "requests", "summary", "targets", "shutdown")


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
    plot: Path | None = None  # scores_vs_alpha.png in the work dir
    table: Path | None = None  # generations.csv in the work dir
    targets: list = field(default_factory=list)  # TargetOutcome per target asked ([]: the calibration was refused)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    total_s: float = 0.0


def run_quickstart(plan: Plan, stream=None) -> QuickstartReport:
    """The pipeline; Serve and Ray are shut down on the way out, also after an error."""
    from lerpray.ray_cluster import local_ray

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
        config = training_config(
            corpora=corpora,
            workdir=plan.workdir,
            base_model=base_model,
            steps=plan.steps,
            tiny=plan.tiny,
            cpus=plan.cpus,
        )
        _train(config, stages, report)
        _publish(plan.workdir / "anchors", stages, report)
        with stages.stage("serve", "starting Ray Serve on 127.0.0.1 with the anchor set"):
            requests = len(plan.prompts) * plan.samples * len(ALPHAS)
            report.url = start_server(
                plan.workdir / "anchors",
                base_model=base_model,
                port=plan.port or free_port(),
                cpus=plan.cpus,
                max_batch_size=min(requests, MAX_BATCH),
                max_queue=requests,
            )
            running.callback(stop_server)  # before Ray's own shutdown; a half-started Serve ends with Ray
            stages.note("serve", f"{report.url}/v1")
        alphas = ", ".join(f"{a:g}" for a in ALPHAS)
        n = len(plan.prompts) * plan.samples
        with stages.stage("requests", f"{len(plan.prompts)} prompts x {plan.samples} seeds = {n} generations at each "
                          f"alpha {alphas}, batched together (engine batches of up to {MAX_BATCH})"):  # fmt: skip
            report.generations = send_requests(
                report.url, plan.prompts, plan.samples, plan.max_tokens, concurrency=MAX_BATCH
            )
        with stages.stage("summary", "VADER per generation: the same prompt and seed side by side, then mean ± SE"):
            report.trend = trend(report.generations)
            for line in side_by_side(report.generations):
                stages.say(line)
            for line in report.trend.lines():
                stages.say(line)
            report.table, report.plot = write_outputs(report.generations, plan.workdir)
            stages.say(f"  every generation: {report.table}")
            stages.say(f"  plot (mean VADER vs alpha, 95 % error bars): {report.plot}")
        with stages.stage("targets", f"calibrate from the requests above, then {len(TARGET_LEVELS)} targets on "
                          "held-out prompts (lerpray/quickstart/target_demo.py)"):  # fmt: skip
            from lerpray.eval.calibration_partial import tokenizer_prefixes

            report.targets = run_target_demo(report.url, plan.workdir / "anchors", report.generations,
                                             prompts=plan.target_prompts, samples=plan.target_samples,
                                             max_tokens=plan.max_tokens, say=stages.say,
                                             prefixes=tokenizer_prefixes(base_model))  # fmt: skip
        with stages.stage("shutdown", "stopping Serve and Ray"):
            running.close()
    report.seconds, report.total_s = dict(stages.seconds), time.monotonic() - started
    stages.say(
        "\ntimes: "
        + ", ".join(f"{name} {s:.0f} s" for name, s in report.seconds.items())
        + f"; total {report.total_s:.0f} s"
    )
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
            from lerpray.quickstart.tiny import save_tiny_base_model

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
            stages.say(
                f"      {name}: {m['step']} steps, loss (mean of the last 10) "
                f"{'-' if loss is None else f'{loss:.3f}'}, {m['tokens_per_s']:.0f} tokens/s"
            )


def _publish(anchors: Path, stages: Stages, report: QuickstartReport) -> None:
    from lerpray.anchors import open_store, read_manifest, verify_anchor_set

    with stages.stage("publish", f"the anchor set in the local store {anchors} (PEFT folders + manifest)"):
        manifest = read_manifest(open_store(anchors))
        report.manifest_version, report.problems = manifest.version, verify_anchor_set(anchors)
        for entry in manifest.anchors:
            alpha = 1 if manifest.role(entry) == "high" else 0
            stages.say(
                f"      {entry.name}: the alpha={alpha} pole, r={entry.rank}, lora_alpha={entry.lora_alpha:g}, "
                f"{len(entry.files)} files"
            )
        if report.problems:
            raise ValueError(f"the anchor set at {anchors} does not verify: {report.problems}; rerun with --fresh")
        stages.note("publish", f"version {manifest.version}, every sha256 verified")
