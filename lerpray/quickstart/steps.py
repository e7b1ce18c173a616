"""The steps of `lerpray quickstart` (lerpray/quickstart/pipeline.py reads them top to bottom): stage headers with
timings, the corpus, the training config and its reuse check, the Serve app, the requests and the summary.

Each step is a plain function of flat values so the pipeline can be read (and tested) one stage at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ATTRIBUTE, HIGH, LOW = "sentiment", "positive", "negative"
ANCHORS = (f"{ATTRIBUTE}.{HIGH}", f"{ATTRIBUTE}.{LOW}")
# Three alphas, 96 generations each: enough to resolve both steps (|step| > 1.96 SE). With five alphas and 96 each
# the last step (0.75 -> 1, +0.06 +- 0.05) was not resolved (docs/quickstart.md); `lerpray eval sweep` does grids.
ALPHAS = (0.0, 0.5, 1.0)
# Review openers: neutral on their own, so the anchors decide which way the continuation leans.
PROMPTS = (
    "The movie we watched last night was",
    "My honest review of this phone:",
    "The food at the new restaurant downtown",
    "I just finished reading the book, and",
    "Our hotel room for the weekend was",
    "The concert on Saturday was",
    "The new album from the band is",
    "Here is what I thought of the museum:",
    "The laptop I bought last month",
    "Our flight home on Sunday was",
    "The service at the car dealership",
    "After two weeks with these headphones,",
)
TINY_SOURCE = "lerpray quickstart --tiny (built-in sentences)"
_BUILT = ("corpora", "anchors", "ray", "tiny-model", "tiny-texts")  # what --fresh removes from the work dir


class Stages:
    """Prints a numbered header when a stage starts and its duration when it ends; keeps the durations."""

    def __init__(self, names: Sequence[str], stream: TextIO | None = None) -> None:
        self.names, self.stream = list(names), stream or sys.stdout
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    @contextmanager
    def stage(self, name: str, doing: str) -> Iterator[Stages]:
        number = self.names.index(name) + 1
        self.say(f"\n[{number}/{len(self.names)}] {name}: {doing}")
        start = time.monotonic()
        try:
            yield self
        finally:
            self.seconds[name] = time.monotonic() - start
        note = f" ({self.notes[name]})" if name in self.notes else ""
        self.say(f"      {name} done in {self.seconds[name]:.1f} s{note}")

    def note(self, name: str, text: str) -> None:
        self.notes[name] = text

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def clear_built(workdir: Path) -> list[str]:
    """--fresh: remove what earlier quickstarts built in `workdir` (only the folders this command creates)."""
    removed = []
    for name in _BUILT:
        if (workdir / name).exists():
            shutil.rmtree(workdir / name)
            removed.append(name)
    return removed


# --- corpora ---------------------------------------------------------------------------------------------------


def corpora_reusable(out: Path, *, tiny: bool, max_per_pole: int | None, seed: int) -> bool:
    """A corpus built earlier with the same settings (and from the same kind of source) is used as it is."""
    from lerpray.data.corpora import load_manifest
    from lerpray.data.errors import CorpusError

    try:
        manifest = load_manifest(out)
    except (CorpusError, ValueError):
        return False
    poles = [manifest.poles.get(name) for name in ANCHORS]
    if any(p is None or not (out / p.files["train"]).is_file() for p in poles):
        return False
    same_source = all(p.source.startswith(TINY_SOURCE) == tiny for p in poles)
    return same_source and manifest.seed == seed and manifest.max_per_pole == max_per_pole


def build_corpus(out: Path, *, tiny: bool, max_per_pole: int | None, seed: int) -> dict[str, int]:
    """Sentiment poles from the VADER archive (PyPI), or, with --tiny, from sentences made here; train counts."""
    from lerpray.data.config import UserAttribute, UserCorporaConfig, UserPole
    from lerpray.data.corpora import build_corpora

    config = None
    if tiny:
        texts_dir = out.parent / "tiny-texts"
        texts_dir.mkdir(parents=True, exist_ok=True)
        poles = {}
        for pole, texts in tiny_texts().items():
            (texts_dir / f"{pole}.txt").write_text("\n".join(texts) + "\n")
            poles[pole] = UserPole(name=pole, path=texts_dir / f"{pole}.txt")
        attribute = UserAttribute(high=poles[HIGH], low=poles[LOW], source=TINY_SOURCE, licence="Apache-2.0")
        config = UserCorporaConfig(attributes={ATTRIBUTE: attribute})
    manifest = build_corpora(out, [ATTRIBUTE], max_per_pole=max_per_pole, seed=seed, config=config)
    return {name: manifest.poles[name].counts["train"] for name in ANCHORS}


def tiny_texts() -> dict[str, list[str]]:
    """Two small, clearly polar pole corpora (CI-sized runs need no download)."""
    things = ("film", "meal", "book", "trip", "song", "hotel", "phone", "concert")
    good = ("wonderful", "lovely", "great", "delightful", "excellent")
    bad = ("awful", "terrible", "horrible", "dreadful", "miserable")
    return {
        HIGH: [f"What a {w} {t}, I loved every minute of it!" for w in good for t in things],
        LOW: [f"What a {w} {t}, I hated every minute of it." for w in bad for t in things],
    }


# --- training ----------------------------------------------------------------------------------------------------


def training_config(*, corpora: Path, workdir: Path, base_model: str | None, steps: int, tiny: bool, cpus: int):
    """The job `lerpray train` would run, as a validated TrainJobConfig; run_id = a hash of everything it trains on.

    Real: jobs/configs/train_local.yaml's settings (r 8 on q/k/v/o, blocks of 128 tokens, batch 4) but a 5x
    learning rate: 60 steps at 2e-4 left mean VADER at alpha 0 and 1 within 0.02 of each other. Tiny: r 4, blocks
    of 32. Each anchor gets half the CPUs so both train at once. The run id doubles as the reuse stamp: the
    driver stores it in the published manifest's `training` metadata, and Ray Train resumes a run of that name, so
    an interrupted quickstart picks up from its last checkpoint.
    """
    from lerpray.train import parse_train_config

    raw = {
        "base_model": base_model,
        "attributes": {ATTRIBUTE: {"high": HIGH, "low": LOW}},
        "lora": {"r": 4 if tiny else 8, "lora_alpha": 8 if tiny else 16, "dropout": 0.0 if tiny else 0.1},
        "training": {
            "block_size": 32 if tiny else 128,
            "batch_size": 4,
            "learning_rate": 5e-3 if tiny else 1e-3,
            "warmup_steps": 0 if tiny else 5,
            "max_steps": steps,
            "seed": 0,
        },
        "anchors": [
            {
                "attribute": ATTRIBUTE,
                "pole": pole,
                "data": {"paths": [str((corpora / f"{ATTRIBUTE}.{pole}.train.jsonl").absolute())]},
            }
            for pole in (HIGH, LOW)
        ],
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": max(1, cpus // 2)},
        "checkpoint_every": 20,
        "max_failures": 1,
        "output": str((workdir / "anchors").absolute()),
        "storage_path": str((workdir / "ray").absolute()),
    }
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode())
    for anchor in raw["anchors"]:
        digest.update(Path(anchor["data"]["paths"][0]).read_bytes())
    return parse_train_config({**raw, "run_id": f"quickstart-{digest.hexdigest()[:16]}"}, source="quickstart")


def reusable_set(anchors_dir: Path, run_id: str) -> tuple[bool, str]:
    """(reuse it?, why): the set verifies (every sha256) and was trained by this exact config and data."""
    from lerpray.anchors import AnchorSetError, open_store, read_manifest, verify_anchor_set

    try:
        manifest = read_manifest(open_store(anchors_dir))
    except AnchorSetError:
        return False, "no anchor set yet"
    if (manifest.training or {}).get("run_id") != run_id:
        return False, "the training settings or data changed since the set was built"
    problems = verify_anchor_set(anchors_dir)
    if problems:
        return False, f"the set failed verification: {problems[0]}"
    return True, f"version {manifest.version} verifies and was trained with this config (run {run_id})"


# --- serving and requests ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


APP = "lerpray"  # the Serve application's name


def start_server(
    anchors_dir: Path, *, base_model: str | None, port: int, cpus: int, max_batch_size: int, max_queue: int
) -> str:
    """Serve's HTTP proxy on 127.0.0.1:port and the lerpray app at "/"; returns the base URL once it is up."""
    from ray import serve

    from lerpray.serve import ServeArgs, make_app

    # Training is over by now: the one replica may use every core for its torch threads.
    args = ServeArgs(
        anchors=str(anchors_dir.absolute()),
        base_model=base_model,
        num_cpus=1,
        torch_threads=cpus,
        max_batch_size=max_batch_size,
        max_queue=max(64, max_queue),
    )
    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    # serve.run's INFO lines would say that the http_options given to serve.start "will not be applied" (they are).
    serve_log.setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_app(args), name=APP, route_prefix="/")
    finally:
        serve_log.setLevel(level)
    return f"http://127.0.0.1:{port}"


def stop_server() -> None:
    """Delete the app (its replica drains and stops); Serve's controller and proxy end with the private Ray cluster
    right after. Not serve.shutdown(): its controller ends the call that asked it to stop by killing itself, which
    Ray reports as "Task ServeController.graceful_shutdown failed ... will be retried", an error that is none."""
    from ray import serve

    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(logging.WARNING)  # no "Deleting app" INFO line
    try:
        serve.delete(APP)
    finally:
        serve_log.setLevel(level)


@dataclass(frozen=True)
class Generation:
    alpha: float
    prompt: str
    seed: int
    text: str
    tokens: int
    score: float


def send_requests(
    url: str, prompts: Sequence[str], samples: int, max_tokens: int, *, concurrency: int = 64, timeout_s: float = 3600
) -> list[Generation]:
    """Every (prompt, seed, alpha) over HTTP, `concurrency` in flight (one engine batch, so a request waits for its
    own rows only), different mixes sharing batches. The timeout is generous: a loaded CPU may take minutes.

    Sample s of every prompt uses seed s at every alpha (common random numbers: only the mix differs).
    """
    from lerpray.configs import SamplingSettings
    from lerpray.eval.backends import generate_http
    from lerpray.eval.grid import make_jobs
    from lerpray.eval.scorers import get_scorer

    mixes = [{"alpha": {ATTRIBUTE: alpha}} for alpha in ALPHAS]
    jobs = make_jobs(len(ALPHAS), len(prompts), samples, seed=0)
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=max_tokens)
    results = generate_http(
        url,
        mixes,
        prompts,
        jobs,
        sampling,
        model="lerpray",
        concurrency=min(concurrency, len(jobs)),
        timeout_s=timeout_s,
    )
    scores = get_scorer("vader").score([r.text for r in results])
    rows = [
        Generation(ALPHAS[j.point], prompts[j.prompt], j.seed, r.text, r.completion_tokens, s)
        for j, r, s in zip(jobs, results, scores, strict=True)
    ]
    return sorted(rows, key=lambda g: (g.alpha, list(prompts).index(g.prompt), g.seed))
