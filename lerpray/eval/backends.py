"""Where a sweep's generations come from: one in-process Engine (any mix in any row of a batch), or a running
lerpray server over its OpenAI-compatible HTTP API. Both take the same jobs and return results in job order."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from lerpray.configs import SamplingSettings
from lerpray.eval.grid import Job, SweepError

if TYPE_CHECKING:
    from lerpray.model import Engine, GenerationResult
    from lerpray.steering import ResolvedMix

__all__ = ["generate_http", "generate_in_process"]


def generate_in_process(
    engine: Engine,
    mixes: Sequence[ResolvedMix],
    prompts: Sequence[str],
    jobs: Sequence[Job],
    sampling: SamplingSettings,
    *,
    chat: bool = False,
) -> list[GenerationResult]:
    """Run every job through one engine (continuous batching, any mix per row); results in job order."""
    from lerpray.model import GenerationRequest
    from lerpray.model.sampling import SamplingParams

    requests = []
    for i, job in enumerate(jobs):
        params = SamplingParams(**sampling.engine_kwargs(), seed=job.seed)
        text = prompts[job.prompt]
        prompt = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        requests.append(GenerationRequest(mix=mixes[job.point], sampling=params, request_id=str(i), **prompt))
    with tqdm(total=len(requests), desc="generate", unit="gen") as bar:
        results = engine.generate(requests)
        bar.update(len(results))
    return results


def generate_http(
    server: str,
    mixes: Sequence[dict],
    prompts: Sequence[str],
    jobs: Sequence[Job],
    sampling: SamplingSettings,
    *,
    chat: bool = False,
    model: str | None = None,
    concurrency: int = 8,
    timeout_s: float = 300.0,
    api_key: str | None = None,
) -> list[GenerationResult]:
    """Run every job against a lerpray (OpenAI-compatible) server, at most `concurrency` requests in flight."""
    from lerpray.model import GenerationResult

    url = server.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}

    def one(i: int) -> GenerationResult:
        job = jobs[i]
        text = prompts[job.prompt]
        body = {"model": model, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": job.seed, "interpolation": mixes[job.point]}  # fmt: skip
        body |= {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        if sampling.top_k:
            body["top_k"] = sampling.top_k  # lerpray's extension; OpenAI has no top_k
        if sampling.min_tokens:
            body["min_tokens"] = sampling.min_tokens  # lerpray's (and vLLM's) extension
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        reply = _post_json(url, {k: v for k, v in body.items() if v is not None}, headers, timeout_s)
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        out = choice["message"]["content"] if chat else choice["text"]
        return GenerationResult(str(i), out, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                choice.get("finish_reason") or "")  # fmt: skip

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        return list(tqdm(pool.map(one, range(len(jobs))), total=len(jobs), desc="generate", unit="gen"))
    finally:  # on an error, do not wait for the requests still queued
        pool.shutdown(wait=True, cancel_futures=True)


def _post_json(url: str, body: dict, headers: dict[str, str], timeout_s: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise SweepError(f"{url} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise SweepError(f"cannot reach the server at {url}: {exc}; is `lerpray serve` running there?") from exc
