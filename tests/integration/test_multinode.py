"""A real multi-node Ray cluster on this machine (head with no CPUs + two worker nodes, each its own raylet) with
S3 (moto's server on 127.0.0.1) as the only shared storage: anchor sets, inputs and outputs all go through s3://.

(The tiny base model is a folder on this one machine; on a real cluster it is a hub id or baked into the image.)
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import multinode
import pytest

# ~6 min of three raylets on a 2-core machine, and load-sensitive: `make test-all` runs them, the default run does not.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

load_test = multinode.load_test_module()
wait_for = multinode.wait_for
WORKERS = [{"num_cpus": 1, "resources": {"node_a": 1}}, {"num_cpus": 1, "resources": {"node_b": 1}}]
PROMPTS = [f"Prompt number {i}" for i in range(8)]


@pytest.fixture
def cluster(s3_env):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(multinode)  # recording_engine travels to the actors
    try:
        with multinode.ray_cluster(WORKERS) as (cluster, nodes):
            yield cluster, nodes
    finally:
        ray.cloudpickle.unregister_pickle_by_value(multinode)


def batch_job_on_s3(s3_client, s3_bucket: str, tmp_path, output: dict) -> dict:
    """A batch config whose anchor set and prompts are on S3: 8 prompts x 2 mixes on 2 one-CPU actors."""
    from lerpray.testing import tiny_anchor_set

    anchors = multinode.upload_folder(s3_client, tiny_anchor_set(tmp_path / "set"), s3_bucket, "sets/tiny")
    s3_client.put_object(Bucket=s3_bucket, Key="in/prompts.jsonl",
                         Body="\n".join(json.dumps({"prompt": p}) for p in PROMPTS).encode())
    return {"anchors": anchors, "input": {"paths": [f"s3://{s3_bucket}/in/prompts.jsonl"]},
            "mixes": [{"alpha": {"sentiment": 0.0}}, {"alpha": {"sentiment": 1.0}}],
            "sampling": {"temperature": 0.0, "max_tokens": 4, "seed": 1},
            "resources": {"num_actors": 2, "batch_size": 2, "num_cpus_per_actor": 1}, "output": output,
            "progress": False}


def test_batch_actors_on_two_nodes_write_a_complete_output_to_s3(cluster, s3_client, s3_bucket, tmp_path):
    from lerpray.batch.config import parse_batch_config
    from lerpray.batch.pipeline import run_batch

    config = batch_job_on_s3(s3_client, s3_bucket, tmp_path, {"path": f"s3://{s3_bucket}/out"})
    markers = tmp_path / "nodes"
    markers.mkdir()

    local = parse_batch_config({**config, "output": {"path": str(tmp_path / "out")}})
    with pytest.raises(ValueError, match=r"^output.path: .* local path, but this Ray cluster has 3 nodes.*s3://"):
        run_batch(local)
    assert not (tmp_path / "out").exists(), "work started before the storage check"

    summary = run_batch(parse_batch_config(config),
                        engine_factory=functools.partial(multinode.recording_engine, str(markers)))

    assert summary.complete and summary.written_rows == len(PROMPTS) * 2, summary
    nodes = {p.read_text() for p in markers.iterdir()}
    workers = {n.node_id for n in cluster[1]}
    assert nodes == workers, f"actors ran on {nodes}, worker nodes are {workers}"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]]
    files = [k for k in keys if not k.endswith("/")]  # "out/": pyarrow's folder marker
    assert files and all(k.endswith(".parquet") for k in files), keys



def test_submit_with_a_working_dir_runs_the_package_on_a_multinode_cluster(s3_env, s3_client, s3_bucket, tmp_path):
    """`lerpray submit batch` to the head's Jobs API with a working dir that holds only the config: the job runs
    `python -m lerpray batch` from the shipped package (no checkout, no jobs/ folder on the cluster), its actors run
    on the worker nodes (the head has no CPUs), and the output lands complete in s3://."""
    import yaml

    from lerpray.batch.config import parse_batch_config

    output = {"path": f"s3://{s3_bucket}/submitted", "format": "jsonl"}
    config = batch_job_on_s3(s3_client, s3_bucket, tmp_path, output)
    parse_batch_config(config)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "batch.yaml").write_text(yaml.safe_dump(config))
    port = multinode.free_port()
    # Job drivers run `python` from the head's PATH: this venv's.
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    submit = [sys.executable, "-m", "lerpray", "submit", "batch", str(job_dir / "batch.yaml"), "--address",
              f"http://127.0.0.1:{port}", "--working-dir", str(job_dir), "--follow"]
    with multinode.ray_cluster(WORKERS, env=env, dashboard_port=port):
        deadline = time.monotonic() + 60
        while True:  # a fresh head takes a few seconds to start the agent that runs jobs; Ray says "try again later"
            try:
                result = subprocess.run(submit, env={**os.environ, **env}, capture_output=True, text=True,
                                        timeout=600)
            except subprocess.TimeoutExpired as err:
                pytest.fail(f"the job did not finish in 600 s:\n{err.stdout}\n{err.stderr}")
            if "No available agent" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)

    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "SUCCEEDED" in result.stderr
    assert "python -m lerpray batch batch.yaml" in result.stdout  # Ray logs the entrypoint it runs
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="submitted/")["Contents"]]
    rows = [json.loads(line) for key in keys if not key.endswith("/")
            for line in s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode().splitlines()
            if line.strip()]
    assert sorted((r["row_id"], r["mix_index"]) for r in rows) == [(i, m) for i in range(len(PROMPTS))
                                                                    for m in range(2)]


def test_serving_from_s3_survives_losing_a_node_under_load(cluster, s3_client, s3_bucket, tmp_path):
    """Two replicas on two nodes; one node removed (its raylet and every process on it) under a retrying load."""
    import time

    from ray import serve

    from lerpray.serve import ServeArgs, make_app
    from lerpray.testing import tiny_anchor_set

    ray_cluster, nodes = cluster
    anchors = multinode.upload_folder(s3_client, tiny_anchor_set(tmp_path / "set"), s3_bucket, "sets/tiny")
    port = multinode.free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        args = ServeArgs(anchors=anchors, num_cpus=1, torch_threads=1, max_batch_size=2, max_tokens_cap=16,
                         default_max_tokens=4)
        serve.run(make_app(args, num_replicas=2, max_ongoing_requests=8, graceful_shutdown_timeout_s=2),
                  name="multinode", route_prefix="/")
        placed = multinode.replica_nodes("multinode")
        assert sorted(placed) == sorted(n.node_id for n in nodes), f"replicas on {placed}"
        spare = ray_cluster.add_node(num_cpus=1, resources={"node_c": 1})  # room for the replacement
        ray_cluster.wait_for_nodes()
        url = f"http://127.0.0.1:{port}"
        run = load_test.LoadRun(url, clients=2, seconds=240, max_requests=100_000, max_tokens=4, retries=4, seed=5)
        run.start()
        try:
            assert wait_for(lambda: sum(r.status == 200 for r in run.records) >= 6, 60), "no traffic before"
            killed_at = time.monotonic()
            ray_cluster.remove_node(nodes[0])  # the node, not just a process
            replaced = wait_for(lambda: sorted(multinode.replica_nodes("multinode")) ==
                                sorted([nodes[1].node_id, spare.node_id]), 180)
            recovered_at = time.monotonic()
            assert replaced, f"no replacement on the spare node: {multinode.replica_nodes('multinode')}"
            n = len(run.records)
            assert wait_for(lambda: sum(r.status == 200 for r in run.records[n:]) >= 6, 60)
        finally:
            run.stop()
            run.join()
    finally:
        serve.shutdown()
    failed = [r for r in run.records if r.status != 200 or r.error is not None]
    print(f"\nFIGURES node-kill-serve: requests={run.summary()['requests']} failed_attempts={len(failed)} "
          f"failed_after_retries={sum(r.final for r in failed)} replaced_after_s={recovered_at - killed_at:.1f} "
          f"failures={sorted({f'{r.status}:{r.error}' for r in failed})}")
    assert sum(r.final for r in failed) == 0, "a request failed even after client retries"
    versions = {r.version for r in run.records if r.status == 200}
    assert len(versions) == 1, f"the replacement serves another set: {versions}"


def test_training_on_two_nodes_resumes_from_s3_after_losing_a_node(s3_env, s3_client, s3_bucket, tmp_path):
    """sentiment.positive trains with DDP (2 workers) on node A; sentiment.negative on solo node B, where the
    driver's progress board is pinned too (the worst case: by default it sits on the driver's node, checked first).
    Node B is removed after the victim's first checkpoint reached S3: the board dies with it, the driver warns and
    goes on without progress, Ray Train restarts the worker group on solo node C (held by a placeholder until
    then), which resumes from that S3 checkpoint; the published set is complete."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from lerpray.anchors import load_anchor_set, verify_anchor_set
    from lerpray.testing import save_tiny_base_model
    from lerpray.train import parse_train_config, train_anchors
    from lerpray.train.progress import start_board

    base = save_tiny_base_model(tmp_path / "base")
    for pole, word in (("positive", "love"), ("negative", "hate")):
        s3_client.put_object(Bucket=s3_bucket, Key=f"data/{pole}.txt",
                             Body="\n".join(f"I {word} this, number {i}." for i in range(200)).encode())
    max_steps, every, victim = 24, 4, "sentiment.negative"
    anchors = [
        {"attribute": "sentiment", "pole": "positive", "data": {"paths": [f"s3://{s3_bucket}/data/positive.txt"]},
         "workers": 2, "worker_resources": {"ddp": 1}},
        {"attribute": "sentiment", "pole": "negative", "data": {"paths": [f"s3://{s3_bucket}/data/negative.txt"]},
         "worker_resources": {"solo": 1}},
    ]
    raw = {"run_id": "multinode", "base_model": str(base), "attributes": {"sentiment": {"high": "positive",
           "low": "negative"}}, "lora": {"r": 4, "lora_alpha": 8},
           "training": {"block_size": 32, "batch_size": 4, "max_steps": max_steps, "learning_rate": 1e-3},
           "anchors": anchors, "checkpoint_every": every, "keep_checkpoints": 3, "max_failures": 2,
           "output": f"s3://{s3_bucket}/sets/sentiment", "storage_path": f"s3://{s3_bucket}/ray"}
    workers = [{"num_cpus": 2, "resources": {"ddp": 2}}, {"num_cpus": 1, "resources": {"solo": 1}},
               {"num_cpus": 1, "resources": {"solo": 1}}]
    with multinode.ray_cluster(workers) as (ray_cluster, nodes):
        with pytest.raises(ValueError, match=r"^storage_path: .* local path, but this Ray cluster has 4 nodes"):
            train_anchors(parse_train_config({**raw, "storage_path": str(tmp_path / "ray")}), show_progress=False)
        board = start_board()  # the default placement: the driver's node (here the head), never a worker's
        assert multinode.actor_node(board) == ray.get_runtime_context().get_node_id() != nodes[0].node_id
        ray.kill(board)
        doomed, spare = nodes[1], nodes[2]
        on_spare = NodeAffinitySchedulingStrategy(spare.node_id, soft=False)

        class Placeholder:  # defined here, so it travels by value: holds C's CPU and `solo` until killed
            pass

        placeholder = ray.remote(num_cpus=1, resources={"solo": 1}, scheduling_strategy=on_spare)(Placeholder).remote()
        assert multinode.actor_node(placeholder) == spare.node_id  # the victim's first worker can only go to B
        killed: dict = {}

        def kill_node_once(snapshot: dict[str, dict]) -> None:
            metrics = snapshot.get(victim)
            if killed or not metrics or metrics.get("checkpoint", 0) < every or metrics["step"] >= max_steps - every:
                return
            assert multinode.node_of_pid([doomed], metrics["pid"]) is doomed, "the victim is not on node B"
            ray.kill(placeholder)  # room on C for the restarted worker group
            ray_cluster.remove_node(doomed)  # the whole node: raylet, object store, workers and the board on it
            killed.update(node=doomed.node_id, pid=metrics["pid"], checkpoint=metrics["checkpoint"])

        outcome = train_anchors(parse_train_config(raw), on_progress=kill_node_once, show_progress=False,
                                progress_board={"scheduling_strategy": NodeAffinitySchedulingStrategy(
                                    doomed.node_id, soft=False)})

    assert killed, "the victim's node was never removed"
    print(f"\nFIGURES node-kill-train: killed={killed} resumed_from={outcome.metrics[victim]['resumed_from']} "
          f"progress_lost={outcome.progress_lost!r}")
    assert outcome.progress_lost is not None  # the board died with node B; the run went on without it
    assert outcome.metrics[victim]["resumed_from"] >= killed["checkpoint"] >= every  # from S3, not step 0
    assert outcome.metrics[victim]["step"] == max_steps
    assert outcome.metrics["sentiment.positive"]["resumed_from"] == 0
    uri = f"s3://{s3_bucket}/sets/sentiment"
    assert verify_anchor_set(uri) == []
    anchor_set = load_anchor_set(uri)
    assert [a.entry.name for a in anchor_set.anchors] == ["sentiment.positive", victim]
    first, second = ({m: (A.shape, B.shape) for m, (A, B, _) in a.modules.items()} for a in anchor_set.anchors)
    assert first == second and len(first) > 0  # the same modules and shapes: the format of an uninterrupted run
    assert all(set(a.entry.files) == {f"{a.entry.name}/adapter_config.json", f"{a.entry.name}/adapter_model."
               "safetensors"} for a in anchor_set.anchors)
