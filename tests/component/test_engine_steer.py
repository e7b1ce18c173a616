"""The engine's steer hook (closed-loop steering, lerpray.feedback): a row whose hook switches its mix mid-reply
runs the new coefficients from its next token on, with no extra forward pass, and the other rows of the batch
(other requests, and the request's other choices) produce the same tokens as without the hook."""

from __future__ import annotations

from dataclasses import replace

import pytest
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD

from lerpray.feedback import Feedback, Gains
from lerpray.model import Engine, EngineError, GenerationRequest, ResolvedMix, SamplingParams

pytestmark = pytest.mark.component

GREEDY = SamplingParams(temperature=0, max_tokens=12)
SWITCH = 4  # the hook answers after this many tokens; the row's token SWITCH is the first under the new mix


def closed_loop(coeffs) -> ResolvedMix:
    """A constant mix marked as steered (a Feedback beside it), as lerpray.steering.resolve makes for feedback."""
    return replace(ResolvedMix.constant(coeffs), feedback=Feedback(SWITCH, Gains(), {}, {}))


def tokens_of(engine: Engine, requests: list[GenerationRequest]) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = {}
    for event in engine.stream(requests):
        out.setdefault((event.request_id, event.index), []).append(event.token_id)
    return out


def batch(steered: GenerationRequest) -> list[GenerationRequest]:
    others = [GenerationRequest(coeffs=c, prompt=p, request_id=f"other{i}", sampling=GREEDY)
              for i, (p, c) in enumerate([(PROMPTS[1], MIXED), (PROMPTS[2], TWO)])]  # fmt: skip
    return [steered, *others]


def test_a_mid_reply_switch_leaves_the_other_rows_tokens_unchanged(engine, spy):
    calls: list[tuple[int, str, int]] = []

    def steer(choice: int, text: str, generated: int):
        calls.append((choice, text, generated))
        return WILD if choice == 1 and generated == SWITCH else None  # choice 0 keeps its mix

    steered = GenerationRequest(mix=closed_loop(ONE), prompt=PROMPTS[0], n=2, request_id="s", sampling=GREEDY,
                                steer=steer)  # fmt: skip
    plain = GenerationRequest(mix=closed_loop(ONE), prompt=PROMPTS[0], n=2, request_id="s", sampling=GREEDY)
    forwards = len(spy["shapes"])
    got = tokens_of(engine, batch(steered))
    steered_forwards = len(spy["shapes"]) - forwards
    forwards = len(spy["shapes"])
    without = tokens_of(engine, batch(plain))
    assert steered_forwards == len(spy["shapes"]) - forwards  # the switch costs no forward pass
    for key in [("s", 0), ("other0", 0), ("other1", 0)]:
        assert got[key] == without[key], key  # other rows and the unsteered choice: the same tokens
    # the steered choice equals a schedule that switches at that token, run in the same batch shape
    schedule = ResolvedMix(pieces=((SWITCH, ONE), (None, WILD)))
    reference = tokens_of(engine, batch(replace(plain, mix=schedule, n=1)))
    assert got[("s", 1)] == reference[("s", 0)]
    assert got[("s", 1)] != without[("s", 1)]  # the switch changed the reply
    generated = [g for c, _, g in calls if c == 1]
    assert generated == list(range(1, 13))  # after every token, the last included, with the text so far
    assert all(isinstance(t, str) for _, t, _ in calls)


def test_a_steer_hook_needs_a_mix_that_may_change():
    with pytest.raises(EngineError, match="steer hook needs a mix"):
        GenerationRequest(coeffs=ONE, prompt="hi", steer=lambda *a: None)
