"""Helpers shared by the engine tests: prompts and mixes, request builders, and the plain HF reference loop."""

from __future__ import annotations

import torch

from lerpray.model import Engine, GenerationRequest, SamplingParams

PROMPTS = ["Hello there", "A much longer prompt than the others, to force padding", "xyz"]
ONE, TWO, MIXED, WILD = (1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.2, 0.3, 0.4, 0.1), (1.5, -0.5, 2.0, -1.0)


def printable_only(module, inputs, logits):
    """Let the random tiny model emit only printable ASCII bytes (ByT5 ids 35..129), so that its texts are
    non-empty and stop strings have something to match. Applied to the logits, after the interpolated layers."""
    banned = torch.ones(logits.shape[-1], dtype=torch.bool)
    banned[35:130] = False
    return logits.masked_fill(banned, -1e4)


def req(prompt, coeffs=ONE, rid=None, **sampling):
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    kw = {"request_id": rid} if rid else {}
    return GenerationRequest(coeffs=coeffs, prompt=prompt, sampling=SamplingParams(**sampling), **kw)


@torch.inference_mode()
def reference_greedy(engine: Engine, request: GenerationRequest) -> list[int]:
    """Plain HF loop, one row, no padding, no position ids: what the engine must reproduce.

    Batched rows differ from this loop by float rounding (~1e-6; BLAS kernels differ between CPUs and batch
    shapes), so token-for-token equality is a fair claim only where no step is a near tie: the loop checks that
    its top two logits are always 1e-4 apart (100x the rounding), and says so if a change of model or prompt makes one a tie."""
    ids = torch.tensor([engine.encode(request)])
    engine.imodel.set_coeffs(torch.tensor([request.coeffs]))
    out, tokens = engine.model(input_ids=ids, use_cache=True), []
    for _ in range(request.sampling.max_tokens):
        top2 = out.logits[0, -1].topk(2).values
        assert top2[0] - top2[1] > 1e-4, f"near tie at token {len(tokens)}: greedy equality would rest on rounding"
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if token == engine.tokenizer.eos_token_id:
            break
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]  # transformers >= 5.2x / older
        out = engine.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    return tokens


def token_ids(engine: Engine, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    for event in engine.stream(requests):
        tokens[event.request_id].append(event.token_id)
    return tokens
