"""Helpers shared by the benchmarks: machine description, timing, memory, JSON output, a file-free tokenizer.

Imports only the standard library and torch at module level (no Ray, no boto3), so GPU scripts and any
benchmark can use it. Benchmarks run as scripts (`python benchmarks/bench_x.py`), so `benchmarks/` is on
sys.path and `import _common` works.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = [
    "git_commit",
    "machine_description",
    "median",
    "result_meta",
    "rss_bytes",
    "sync",
    "timed",
    "word_tokenizer",
    "write_json",
]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed, or installed without metadata
        return None


def machine_description(device: str | torch.device = "cpu") -> dict:
    """What a reader needs to compare numbers: CPU, cores, load, library versions, and the GPU if one is used."""
    device = torch.device(device)
    info = {
        "timestamp_utc": _now(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_gib": _memory_total_gib(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def _memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work so that wall-clock times are real (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[float, object]:
    """(seconds, result) of one call, synchronising the device before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rss_bytes() -> int:
    """Resident set size of this process now (psutil if installed, else /proc/self/status)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("cannot read RSS: install psutil or run on Linux") from None


def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with `vocab_size` ids, built in code (no files): "w5 w17" -> [5, 17].

    For randomly initialised models (GPU 1B config, --quick): any id the model samples decodes to text, so the
    engine's incremental detokenisation works. Ids 0/1 are the pad and EOS tokens, so prompts draw from 2...
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    core = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    tokenizer.padding_side = "left"
    return tokenizer


REPO = Path(__file__).resolve().parents[1]
COMMIT_ENV = "LERPRAY_GIT_COMMIT"


def git_commit(repo: str | Path = REPO) -> str:
    """The commit the benchmark ran from: $LERPRAY_GIT_COMMIT if set (a copy without .git, e.g. on a GPU machine),
    else `git rev-parse HEAD` with "-dirty" when tracked files differ from it, else "unknown"."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=30).returncode != 0  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def result_meta(machine: dict | None = None, device: str | torch.device = "cpu") -> dict:
    """What every result file records: the machine (GPU name if one was used, else the CPU model and its cores),
    the UTC date and time, and the git commit. `machine` is a machine_description() already taken."""
    machine = machine or machine_description(device)
    if machine.get("gpu_name"):
        name = f"{machine['gpu_name']} (host CPU {machine.get('cpu_model')})"
    else:
        name = f"{machine.get('logical_cores')}-core {machine.get('cpu_model')}"
    return {"machine": name, "date": machine.get("timestamp_utc") or _now(), "commit": git_commit(),
            "recorded": "by the benchmark"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: str | Path, payload: dict, device: str | torch.device = "cpu") -> Path:
    """Write `payload` as indented JSON (atomically: temp file, then rename), creating folders. A payload without
    a "meta" block gets one first (result_meta: machine, date, commit), from its "machine" description if it has
    one."""
    path = Path(path)
    if "meta" not in payload:
        described = payload.get("machine") if isinstance(payload.get("machine"), dict) else None
        payload = {"meta": result_meta(described, device), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
