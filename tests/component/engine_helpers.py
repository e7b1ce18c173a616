"""Helpers shared by the engine tests: prompts and mixes, request builders, and the plain HF reference loop."""

from __future__ import annotations

import torch

from lerpray.model import Engine, GenerationRequest, SamplingParams

PROMPTS = ["Hello there", "A much longer prompt than the others, to force padding", "xyz"]
ONE, TWO, MIXED, WILD = (1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.2, 0.3, 0.4, 0.1), (1.5, -0.5, 2.0, -1.0)


def printable_only(module, inputs, logits):
    """Let the random tiny model emit only printable ASCII bytes (ByT5 ids 35..129), so that its texts are
    non-empty and stop strings have something to match. Applied to the logits, after the interpolated layers."""
    banned = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)  # CUDA too (the gpu tests)
    banned[35:130] = False
    return logits.masked_fill(banned, -1e4)


def req(prompt, coeffs=ONE, rid=None, **sampling):
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    kw = {"request_id": rid} if rid else {}
    return GenerationRequest(coeffs=coeffs, prompt=prompt, sampling=SamplingParams(**sampling), **kw)


@torch.inference_mode()
def reference_greedy(engine: Engine, request: GenerationRequest, reshape=None, logprobs: list | None = None) -> list[int]:
    """Plain HF loop, one row, no padding, no position ids: what the engine must reproduce.

    A schedule switches the coefficients before the forward pass of each token that needs another mix (the
    cache keeps what earlier tokens wrote under their own mix). `reshape(z, tokens)` edits the logits before the
    argmax (penalties, biases); `logprobs` collects each step's log_softmax of the raw logits.

    Batched rows differ from this loop by float rounding (~1e-6; BLAS kernels differ between CPUs and batch
    shapes), so token-for-token equality is a fair claim only where no step is a near tie: the loop checks that
    its top two logits are always 1e-4 apart (100x the rounding), and says so if a model or prompt makes a tie."""
    def mix(i: int):
        return request.mix.at(i)

    ids = torch.tensor([engine.encode(request)])
    engine.imodel.set_coeffs(torch.tensor([mix(0)]))
    out, tokens = engine.model(input_ids=ids, use_cache=True), []
    for _ in range(request.sampling.max_tokens):
        z = out.logits[0, -1].float().clone()
        if logprobs is not None:
            logprobs.append(torch.log_softmax(z, dim=-1))
        if reshape is not None:
            reshape(z, tokens)
        top2 = z.topk(2).values
        assert top2[0] - top2[1] > 1e-4, f"near tie at token {len(tokens)}: greedy equality would rest on rounding"
        token = int(z.argmax())
        tokens.append(token)
        if token == engine.tokenizer.eos_token_id:
            break
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]  # transformers >= 5.2x / older
        engine.imodel.set_coeffs(torch.tensor([mix(len(tokens))]))
        out = engine.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    return tokens


def token_ids(engine: Engine, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    for event in engine.stream(requests):
        tokens[event.request_id].append(event.token_id)
    return tokens
