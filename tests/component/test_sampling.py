"""The vectorised per-row sampler and the incremental detokeniser with stop strings."""

from __future__ import annotations

import pytest
import torch

from lerpray.model.sampling import SamplingError, SamplingParams, TextStream, make_generator, sample_next

pytestmark = pytest.mark.component


class ByteTokenizer:
    """Token id = one UTF-8 byte; decodes like a byte-level BPE (partial characters become U+FFFD)."""

    def decode(self, ids, **kwargs) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class WordTokenizer:
    """SentencePiece-like: "▁" marks a leading space, which is dropped at the start of the decoded text."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def decode(self, ids, **kwargs) -> str:
        return "".join(self.words[i] for i in ids).replace("▁", " ").removeprefix(" ")


def draws(logits: torch.Tensor, params: SamplingParams, n: int, seed: int = 0) -> torch.Tensor:
    generator = make_generator(seed)
    return torch.stack([sample_next(logits[None], [params], [generator])[0] for _ in range(n)])


LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05]))  # [V]; most likely first: 1, 3, 2, 0/4


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, top_k=1)] * 2
    assert torch.equal(sample_next(logits, params, [None] * 4), logits.argmax(-1))


def test_sampling_follows_the_softmax():
    counts = torch.bincount(draws(LOGITS, SamplingParams(), 4000), minlength=5) / 4000
    assert torch.allclose(counts, LOGITS.softmax(-1), atol=0.03)


def test_temperature_sharpens():
    hot = torch.bincount(draws(LOGITS, SamplingParams(temperature=0.05), 500), minlength=5)
    assert hot[1] == 500


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(top_k=2), {1, 3}),
        (SamplingParams(top_p=0.5), {1}),  # token 1 alone reaches 0.5
        (SamplingParams(top_p=0.75), {1, 3}),
        (SamplingParams(top_p=0.85, top_k=2), {1, 3}),
        (SamplingParams(top_p=0.85), {1, 3, 2}),
    ],
)
def test_top_k_and_top_p_restrict_the_support(params, allowed):
    seen = set(draws(LOGITS, params, 600).tolist())
    assert seen == allowed


def test_seeded_row_ignores_its_companions():
    row = torch.randn(1, 100)
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=40, seed=11)
    alone = draws(row[0], params, 30, seed=11)
    g = make_generator(11)
    crowd = []
    for _ in range(30):
        logits = torch.cat([torch.randn(2, 100), row])  # [3, V], the seeded row last
        others = [SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, seed=5)]
        crowd.append(sample_next(logits, [*others, params], [None, make_generator(5), g])[2])
    assert torch.equal(alone, torch.stack(crowd))
    assert len(set(alone.tolist())) > 3  # it really samples


def test_sampling_params_are_validated():
    with pytest.raises(SamplingError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(SamplingError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(SamplingError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop="###").stop == ("###",)


def test_multibyte_characters_are_released_whole():
    stream = TextStream(ByteTokenizer(), list(b"ab"), ())
    deltas = [stream.push(b)[0] for b in "é€x".encode()]
    assert deltas == ["", "é", "", "", "€", "x"]


def test_a_partial_character_is_flushed_at_the_end():
    stream = TextStream(ByteTokenizer(), list(b"ab"), ())
    assert stream.push("€".encode()[0]) == ("", False)
    assert stream.flush() == ("\ufffd", False)


def test_first_token_keeps_its_leading_space():
    tokenizer = WordTokenizer(["▁Hello", "▁world", "!"])
    stream = TextStream(tokenizer, [0], ())
    assert [stream.push(1)[0], stream.push(2)[0]] == [" world", "!"]


def test_stop_string_is_held_back_then_cut():
    stream = TextStream(ByteTokenizer(), [], ("END", "##"))
    out = [stream.push(b)[0] for b in b"okE#EN"]
    assert out == ["o", "k", "", "E", "#", ""]
    assert stream.push(ord("D")) == ("", True)


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    stream = TextStream(ByteTokenizer(), [], ("END",))
    assert stream.push(ord("E")) == ("", False)
    assert stream.push(ord("x")) == ("Ex", False)
    assert stream.push(ord("E")) == ("", False)
    assert stream.flush() == ("E", False)


def test_stop_inside_one_token_cuts_mid_token():
    words = ["▁one", "▁two.\n\nthree"]
    stream = TextStream(WordTokenizer(words), [], ("\n\n",))
    assert stream.push(0) == ("one", False)
    assert stream.push(1) == (" two.", True)
