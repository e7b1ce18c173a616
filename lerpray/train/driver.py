"""Fan a training job out over Ray Train: one TorchTrainer per anchor, run concurrently, then publish the set.

`train_anchors(config)` reads top to bottom: refuse an existing set early -> one trainer per anchor -> run them in
a thread pool as wide as the cluster fits (the rest wait their turn) while showing each anchor's step, loss and
tokens/s -> if every anchor finished, download the final checkpoints and publish them with
lerpray.anchors.build_anchor_set (manifest last). A failed anchor publishes nothing; rerunning with the same run id
resumes every anchor from its latest checkpoint (Ray Train resumes a run whose name it has seen).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lerpray.configs import absolute_base_model, absolute_uri
from lerpray.data.errors import DataError
from lerpray.data.text_io import expand_paths
from lerpray.train.config import AnchorSpec, TrainJobConfig
from lerpray.train.preflight import check_cluster_storage, check_extends
from lerpray.train.worker import ADAPTER_DIR, IDENTITY_FILE, train_loop_per_worker
from lerpray.train.worker_args import WorkerArgs

if TYPE_CHECKING:
    from lerpray.anchors import Manifest

# Non-secret settings a worker on another node needs to behave like the driver (credentials stay with the nodes).
_PROPAGATED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                   "HF_HUB_OFFLINE", "HF_HOME", "LERPRAY_CACHE", "TORCH_EXTENSIONS_DIR")


class TrainingFailed(RuntimeError):
    """One or more anchors failed; nothing was published. The message names them and how to resume."""


@dataclass
class TrainOutcome:
    run_id: str
    manifest: Manifest
    metrics: dict[str, dict] = field(default_factory=dict)  # anchor -> final metrics
    checkpoints: dict[str, list[dict]] = field(default_factory=dict)  # anchor -> checkpoint events seen
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # anchor -> fit() (start, end), monotonic s
    progress_lost: str | None = None  # why the progress board died mid-run (training went on), else None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_name(run_id: str, anchor: str) -> str:
    return f"lerpray-{run_id}-{anchor}"


def train_anchors(
    config: TrainJobConfig,
    *,
    overwrite: bool = False,
    run_id: str | None = None,
    on_progress: Callable[[dict[str, dict]], None] | None = None,
    show_progress: bool = True,
    progress_board: dict | None = None,
) -> TrainOutcome:
    """Train every anchor of `config` on the connected Ray cluster and publish the set to `config.output`.

    Args:
        overwrite: replace an existing set at the output (its version + 1).
        run_id: names the Ray runs; defaults to config.run_id, else a new one. Reuse it to resume.
        on_progress: called with {anchor: latest metrics} about twice a second (tests, custom dashboards).
        show_progress: draw per-anchor progress on stderr.
        progress_board: Ray actor options for the progress board, over its defaults (no CPU, pinned to this
            driver's node); tests name it or place it elsewhere. If the board dies, the run goes on without
            progress (one warning; `TrainOutcome.progress_lost` says why).

    Raises:
        TrainingFailed: an anchor's run failed after its retries (nothing is published).
    """
    import ray

    from lerpray.train.progress import BoardReader, ProgressView, start_board

    run_id = run_id or config.run_id or new_run_id()
    check_cluster_storage(config, len([n for n in ray.nodes() if n.get("Alive")]))
    store = _output_store(config)
    _refuse_existing(store, overwrite, config.versioned)
    if config.extends is not None:
        check_extends(config)
    for i, anchor in enumerate(config.anchors):
        try:  # a missing local file fails here, not in a worker
            expand_paths(anchor.data.paths, config.s3.options())
        except DataError as err:
            raise DataError(f"anchors.{i}.data.paths: {err}") from None
    board = start_board(progress_board)
    reader = BoardReader(board)
    trainers = {a.name: _trainer(a, config, run_id, board) for a in config.anchors}
    view = ProgressView(list(trainers), enabled=show_progress)
    spans: dict[str, tuple[float, float]] = {}

    def poll() -> None:
        snapshot = reader.poll()
        if snapshot is not None:
            view.update(snapshot)
            if on_progress is not None:
                on_progress(snapshot)

    try:
        fits = {name: trainer.fit for name, trainer in trainers.items()}
        results = run_concurrently(fits, concurrency(config), poll, spans)
        snapshot, checkpoints = reader.final()
        view.update(snapshot)
    finally:
        view.close()
        reader.close()
    failed = {name: err for name, err in results.items() if isinstance(err, BaseException)}
    if failed:
        lines = "\n".join(f"  {name}: {type(err).__name__}: {err}" for name, err in failed.items())
        raise TrainingFailed(f"{len(failed)} of {len(trainers)} anchors failed; nothing was published:\n{lines}\n"
                             f"Fix the cause and rerun with run id {run_id!r} (`--run-id {run_id}`) to resume "
                             "every anchor from its latest checkpoint.")
    manifest, metrics = _publish(config, results, store, overwrite, run_id)
    return TrainOutcome(run_id, manifest, metrics, checkpoints, spans, reader.lost)


def concurrency(config: TrainJobConfig) -> int:
    """How many anchors train at once: max_concurrent_anchors if set, else as many as the cluster's CPUs/GPUs fit."""
    import ray

    res = config.resources
    if res.max_concurrent_anchors is not None:
        return min(res.max_concurrent_anchors, len(config.anchors))
    total = ray.cluster_resources()
    fits = math.floor(total.get("CPU", 0) / (res.workers_per_anchor * res.cpus_per_worker) + 1e-9)
    if res.use_gpu:
        fits = min(fits, math.floor(total.get("GPU", 0) / (res.workers_per_anchor * res.gpus_per_worker) + 1e-9))
    return max(1, min(fits, len(config.anchors)))


def worker_args(anchor: AnchorSpec, config: TrainJobConfig, progress=None) -> WorkerArgs:
    """The flat values one anchor's workers train with."""
    lora, tr, ds = anchor.lora, anchor.training, config.deepspeed
    return WorkerArgs(
        anchor=anchor.name, base_model=absolute_base_model(config.base_model),
        data_paths=tuple(map(absolute_uri, anchor.data.paths)), text_field=anchor.data.text_field,
        data_format=anchor.data.format,
        r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.dropout, target_modules=tuple(lora.target_modules),
        use_rslora=lora.use_rslora, block_size=tr.block_size, batch_size=tr.batch_size, grad_accum=tr.grad_accum,
        learning_rate=tr.learning_rate, lr_schedule=tr.lr_schedule, warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay, max_grad_norm=tr.max_grad_norm, epochs=tr.epochs, max_steps=tr.max_steps,
        seed=tr.seed, checkpoint_every=config.checkpoint_every,
        deepspeed_stage=ds.stage if ds else None, offload_optimizer=bool(ds and ds.offload_optimizer),
        use_gpu=config.resources.use_gpu, s3_options=config.s3.options(), progress=progress,
    )


def _trainer(anchor: AnchorSpec, config: TrainJobConfig, run_id: str, board):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lerpray.train.progress import CheckpointRegistered

    res = config.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {}),
                  **anchor.worker_resources}
    storage_path, filesystem = _storage(config)
    env = {k: os.environ[k] for k in _PROPAGATED_ENV if k in os.environ}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"args": worker_args(anchor, config, board)},
        scaling_config=ScalingConfig(num_workers=anchor.workers or res.workers_per_anchor, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=run_name(run_id, anchor.name),
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            worker_runtime_env={"env_vars": env} if env else None,
            callbacks=[CheckpointRegistered(board, anchor.name)],
        ),
    )


def run_concurrently(fits: dict[str, Callable], width: int, poll: Callable[[], None],
                     spans: dict[str, tuple[float, float]]) -> dict[str, object]:
    """Call each anchor's fit(), `width` at a time, calling poll() about twice a second until all are done.

    Returns anchor -> fit()'s result, or the exception it raised. After the first failure no queued anchor starts
    (running ones finish and keep their checkpoints). `spans` receives each fit's (start, end) monotonic time.
    """
    results: dict[str, object] = {}
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="lerpray-fit") as pool:
        futures: dict[Future, str] = {pool.submit(_timed, fit, spans, name): name for name, fit in fits.items()}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue  # reported below
                err = future.exception()
                results[futures[future]] = err if err is not None else future.result()
                if err is not None:
                    for other in pending:
                        other.cancel()
            poll()
    for future, name in futures.items():
        if future.cancelled():
            results[name] = TrainingFailed("not started: another anchor failed first")
    return results


def _timed(fit: Callable, spans: dict, name: str):
    start = time.monotonic()
    try:
        return fit()
    finally:
        spans[name] = (start, time.monotonic())


def _publish(config: TrainJobConfig, results: dict, store, overwrite: bool, run_id: str):
    from lerpray.anchors import AttributePoles, BaseModelIdentity, build_anchor_set, publish_version

    with tempfile.TemporaryDirectory(prefix="lerpray-publish-") as tmp:
        adapters, metrics, identities = {}, {}, {}
        for name in config.anchor_names:
            local = Path(results[name].checkpoint.to_directory(str(Path(tmp) / name)))
            adapters[name] = local / ADAPTER_DIR
            identities[name] = BaseModelIdentity.model_validate_json((local / IDENTITY_FILE).read_text())
            metrics[name] = {k: v for k, v in results[name].metrics.items()
                             if isinstance(v, int | float | str) and k != "pid"}
        checksums = {identity.checksum for identity in identities.values()}
        if len(checksums) != 1:
            raise TrainingFailed(f"anchors were trained on different base models: {identities}")
        training = {"run_id": run_id, "config": config.model_dump(mode="json"),
                    "runs": {name: run_name(run_id, name) for name in adapters}}
        poles = {attr: AttributePoles(high=p.high, low=p.low) for attr, p in config.attributes.items()}
        identity = next(iter(identities.values()))
        if config.versioned:
            manifest = publish_version(identity, adapters, store, extends=config.extends, training=training,
                                       metrics=metrics, attributes=poles)
        else:
            manifest = build_anchor_set(identity, adapters, store, overwrite=overwrite, training=training,
                                        metrics=metrics, attributes=poles)
    return manifest, metrics


def _output_store(config: TrainJobConfig):
    from lerpray.anchors import open_store

    return open_store(config.output, **config.s3.options())


def _refuse_existing(store, overwrite: bool, versioned: bool) -> None:
    from lerpray.anchors import MANIFEST_NAME, AnchorSetError

    if versioned and store.exists(MANIFEST_NAME):
        raise AnchorSetError(f"output: {store.uri} holds an unversioned anchor set; `versioned: true` publishes "
                             "versions to a new location")
    if not versioned and not overwrite and store.exists(MANIFEST_NAME):
        raise AnchorSetError(f"an anchor set already exists at {store.uri}; pass --overwrite to replace it (as a "
                             "new version) or choose another `output`")


def _storage(config: TrainJobConfig):
    """RunConfig (storage_path, storage_filesystem): an explicit S3 endpoint/region needs a pyarrow filesystem."""
    path = config.storage_path
    if path is None:
        return None, None
    if not path.startswith("s3://"):
        return absolute_uri(path), None
    if config.s3.endpoint_url is None and config.s3.region is None:
        return path, None  # pyarrow reads AWS_ENDPOINT_URL / AWS_REGION itself
    from lerpray.anchors.s3 import arrow_filesystem

    return path.removeprefix("s3://"), arrow_filesystem(config.s3.endpoint_url, config.s3.region)
