"""Keep cluster/ and jobs/configs/ true: every YAML parses, Serve configs import and validate with lerpray's own
models, the RayService serves what cluster/serve.yaml serves, one Ray version and image everywhere, RayJob
entrypoints exist, resource requests make sense. No cluster needed: these read files."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
ALL_YAML = sorted([*CLUSTER.rglob("*.yaml"), *(ROOT / "jobs" / "configs").rglob("*.yaml")])
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d+)(?P<gpu>-gpu)?$")
# Fields of an embedded Serve app that may differ from cluster/serve.yaml (a local CPU setup): where the anchor set
# is, and the replica's device and GPUs. Everything else must be identical.
APP_OVERRIDES = (("args", "anchors"), ("args", "device"))
DEPLOYMENT_OVERRIDES = (("ray_actor_options", "num_gpus"),)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> dict[str, dict]:
    return {p.name: load(p) for p in sorted(KUBERAY.glob("*.yaml"))}


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[manifest["kind"]]()


def containers(spec: dict) -> list[tuple[str, dict]]:
    """(group name, container) of the head and every worker group."""
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, group in groups for c in group["template"]["spec"]["containers"]]


def embedded_serve_configs() -> dict[str, dict]:
    return {name: yaml.safe_load(m["spec"]["serveConfigV2"]) for name, m in manifests().items()
            if m["kind"] == "RayService"}


def serve_configs() -> dict[str, dict]:
    return {"serve.yaml": load(CLUSTER / "serve.yaml"), "serve-multiplexed.yaml": load(CLUSTER / "serve-multiplexed.yaml"),
            **embedded_serve_configs()}


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_parses_to_a_mapping(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected mapping documents"


def test_the_kuberay_manifests_are_ray_io_v1_and_complete():
    kinds = {m["kind"] for m in manifests().values()}
    assert kinds == {"RayCluster", "RayJob", "RayService"}
    for name, manifest in manifests().items():
        assert manifest["apiVersion"] == "ray.io/v1", name
        if manifest["kind"] == "RayJob":  # strings KubeRay parses again: they must be YAML too
            assert isinstance(yaml.safe_load(manifest["spec"]["runtimeEnvYAML"]), dict)


@pytest.mark.parametrize("name", sorted(serve_configs()))
def test_serve_config_imports_and_validates_with_lerpray_models(name):
    from ray.serve.schema import ServeDeploySchema

    config = serve_configs()[name]
    ServeDeploySchema.model_validate(config)  # Serve's own schema: what `serve deploy` / KubeRay check
    from lerpray.serve.config import ServeArgs

    for app in config["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), app["import_path"]
        ServeArgs.model_validate(app.get("args") or {})


@pytest.mark.parametrize("name", ["serve.yaml", "serve-multiplexed.yaml"])
def test_serve_config_deployments_are_the_apps_own(name):
    """A `deployments:` entry must name a deployment the app builds (Serve refuses unknown names at deploy time)."""
    from lerpray.serve.app import build_app

    for app in load(CLUSTER / name)["applications"]:
        built = build_app(app["args"])
        names = {built._bound_deployment.name, *(a._bound_deployment.name for a in built._bound_deployment.init_args
                                                  if hasattr(a, "_bound_deployment"))}  # fmt: skip
        assert {d["name"] for d in app.get("deployments", [])} <= names, f"{name}: the app builds {sorted(names)}"


@pytest.mark.parametrize("name", sorted(embedded_serve_configs()))
def test_rayservice_embeds_the_applications_of_cluster_serve_yaml(name):
    reference = load(CLUSTER / "serve.yaml")["applications"]
    embedded = embedded_serve_configs()[name]["applications"]
    assert len(embedded) == len(reference)
    for app, ref in zip(embedded, reference, strict=True):
        restored = copy.deepcopy(app)
        for path in APP_OVERRIDES:
            _set(restored, path, _get(ref, path))
        for dep, ref_dep in zip(restored.get("deployments", []), ref.get("deployments", []), strict=True):
            for path in DEPLOYMENT_OVERRIDES:
                _set(dep, path, _get(ref_dep, path))
        assert restored == ref, f"{name}: app {app.get('name')!r} differs from cluster/serve.yaml beyond the overrides"
        assert app["args"]["anchors"].startswith("s3://"), "pods read the anchor set from S3, not a local path"


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = (tree or {}).get(key)
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    if value is None:
        tree.pop(path[-1], None)
    else:
        tree[path[-1]] = value


def all_images() -> dict[str, str]:
    """Every image of every manifest and of the AWS launcher: where -> image."""
    found = {f"{n}:{group}/{c['name']}": c["image"] for n, m in manifests().items()
             for group, c in containers(cluster_spec(m))}
    docker = load(CLUSTER / "aws-cluster.yaml")["docker"]
    found.update({f"aws-cluster.yaml:docker.{k}": v for k, v in docker.items() if k.endswith("image")})
    return found


def test_one_ray_version_and_one_image_everywhere():
    import ray

    images = all_images()
    parsed = {where: IMAGE.match(image) for where, image in images.items()}
    assert all(parsed.values()), f"not a rayproject/ray:VERSION-pyXY[-gpu] image: {images}"
    assert {m["version"] for m in parsed.values()} == {ray.__version__}, "images must run the Ray lerpray tests with"
    assert len({m["py"] for m in parsed.values()}) == 1, f"one Python version across images: {images}"
    assert len({m.group(0).removesuffix("-gpu") for m in parsed.values()}) == 1
    py = next(iter(parsed.values()))["py"]
    assert py == f"{sys.version_info.major}{sys.version_info.minor}", "images use the Python lerpray is tested on"
    for name, manifest in manifests().items():
        assert cluster_spec(manifest)["rayVersion"] == ray.__version__, name
    for path in [*KUBERAY.glob("*.yaml"), CLUSTER / "aws-cluster.yaml"]:
        pins = set(re.findall(r"ray\[[a-z,]+\]==([\w.]+)", path.read_text()))
        assert pins <= {ray.__version__}, f"{path.name} installs another Ray: {pins}"


def test_every_pod_installs_the_same_lerpray():
    specs = set()
    for name, manifest in manifests().items():
        for group, container in containers(cluster_spec(manifest)):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert "LERPRAY_PIP_SPEC" in env and "$LERPRAY_PIP_SPEC" in " ".join(container["args"]), (name, group)
            assert "$KUBERAY_GEN_RAY_START_CMD" in container["args"][-1], f"{name}/{group} never starts Ray"
            specs.add(env["LERPRAY_PIP_SPEC"])
        assert manifest["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true", name
    assert len(specs) == 1, f"one lerpray build across manifests: {specs}"


@pytest.mark.parametrize("name", ["rayjob-train.yaml"])
def test_rayjob_entrypoint_runs_a_lerpray_command_with_an_existing_config(name):
    from lerpray.cli import build_parser

    manifest = manifests()[name]
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "lerpray"], "jobs run the package installed in the image"
    args = build_parser().parse_args(argv[3:])  # a real subcommand with valid options
    configs = [ROOT / a for a in argv[3:] if a.endswith(".yaml")]
    assert configs and all(c.is_file() for c in configs), f"missing config in {argv}"
    if args.command == "train":
        from lerpray.train.config import load_train_config

        config = load_train_config(configs[0])
        assert config.resources.use_gpu, "the RayJob's worker pods are GPU pods"


@pytest.mark.parametrize("name", sorted(manifests()))
def test_kuberay_resource_requests_are_sane(name):
    spec = cluster_spec(manifests()[name])
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "keep work off the head"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
        assert group["maxReplicas"] > 0
    for group, container in containers(spec):
        resources = container["resources"]
        limits, requests = resources["limits"], resources.get("requests", {})
        assert "cpu" in limits and "memory" in limits, f"{name}/{group}: set cpu and memory limits"
        gpus = int(limits.get("nvidia.com/gpu", 0))
        is_gpu_image = container["image"].endswith("-gpu")
        assert (gpus > 0) == is_gpu_image == (group != "head"), f"{name}/{group}: GPU image <=> nvidia.com/gpu"
        if "nvidia.com/gpu" in requests:
            assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"], "Kubernetes needs GPU requests == limits"
        for key in ("cpu", "memory"):
            if key in requests:
                assert _quantity(requests[key]) <= _quantity(limits[key]), f"{name}/{group}: {key} request > limit"


def _quantity(value: str | int) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _pod_gpus(group: dict) -> int:
    return int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_rayservice_gpu_pods_fit_its_replicas():
    for name, manifest in manifests().items():
        if manifest["kind"] != "RayService":
            continue
        groups = cluster_spec(manifest)["workerGroupSpecs"]
        most = sum(g["maxReplicas"] * _pod_gpus(g) for g in groups)
        least = sum(g["minReplicas"] * _pod_gpus(g) for g in groups)
        for app in yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]:
            for dep in app["deployments"]:
                gpus, scaling = dep["ray_actor_options"]["num_gpus"], dep["autoscaling_config"]
                assert gpus > 0 and app["args"]["device"].startswith("cuda"), f"{name}: GPU replicas on GPU pods"
                assert scaling["max_replicas"] * gpus <= most, f"{name}: max_replicas need more GPU pods"
                assert scaling["min_replicas"] * gpus <= least, f"{name}: min_replicas need more GPU pods at minimum"


def test_aws_cluster_config_is_valid_for_the_ray_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(CLUSTER / "aws-cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(raw)))  # Ray's own schema and defaults (no AWS calls)
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "keep work off the head"
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    assert workers, "no worker node types"
    for name, node in workers.items():
        assert re.match(r"^(g|p)\d", node["node_config"]["InstanceType"]), f"{name} is not a GPU instance type"
        assert 0 <= node["min_workers"] <= node["max_workers"] <= raw["max_workers"], name
    assert raw["docker"]["worker_image"].endswith("-gpu") and not raw["docker"]["head_image"].endswith("-gpu")
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = " ".join(raw.get("setup_commands", []) + raw[key])
        assert re.search(r"pip install .*lerpray", commands), f"{key} must install lerpray"
