"""Training data: reading JSONL/text, packing into blocks, and the step -> blocks schedule that makes resumes exact."""

from __future__ import annotations

import json

import pytest
import torch

from lerpray.data.errors import DataError
from lerpray.data.text_io import read_texts
from lerpray.train.packing import BlockSchedule, pack_blocks, steps_for_epochs
from lerpray.train.strategies import lr_lambda

pytestmark = pytest.mark.unit


class CharTokenizer:
    """One id per character (ord), EOS = 0: enough to check packing arithmetic exactly."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_read_texts_jsonl_text_and_folders(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    (tmp_path / "b.txt").write_text("three\n  \nfour\n")
    (tmp_path / "ignored.csv").write_text("x,y\n")
    assert read_texts([str(tmp_path / "a.jsonl")], text_field="body") == ["one", "two"]
    assert read_texts([str(tmp_path)], text_field="body") == ["one", "two", "three", "four"]
    assert read_texts([str(tmp_path / "b.txt")], fmt="text") == ["three", "four"]


def test_read_texts_errors_name_file_line_and_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no string field 'text'"):
        read_texts([str(bad)])
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not valid JSON"):
        read_texts([str(bad)])
    with pytest.raises(DataError, match="does not exist"):
        read_texts([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no texts found"):
        read_texts([str(tmp_path / "empty.txt")])


def test_pack_blocks_concatenates_with_eos_and_drops_the_tail():
    texts = ["abc", "de", "fghij"]  # 3+1 + 2+1 + 5+1 = 13 tokens -> 3 blocks of 4, 1 token dropped
    blocks = pack_blocks(texts, CharTokenizer(), block_size=4, seed=0)
    assert blocks.shape == (3, 4) and blocks.dtype == torch.long
    assert (blocks == 0).sum() >= 2  # EOS separators survive packing
    again = pack_blocks(texts, CharTokenizer(), block_size=4, seed=0)
    assert torch.equal(blocks, again)  # deterministic for a seed
    with pytest.raises(DataError, match="fewer than one block of 64"):
        pack_blocks(texts, CharTokenizer(), block_size=64, seed=0)


def test_pack_blocks_seed_changes_example_order():
    texts = [chr(ord("a") + i) * 3 for i in range(20)]
    first = pack_blocks(texts, CharTokenizer(), block_size=8, seed=0)
    assert not torch.equal(first, pack_blocks(texts, CharTokenizer(), block_size=8, seed=1))
    assert sorted(first.flatten().tolist()) == sorted(pack_blocks(texts, CharTokenizer(), 8, seed=1).flatten().tolist())


def schedule(rank: int, world: int, **kw) -> BlockSchedule:
    return BlockSchedule(10, batch_size=kw.get("batch_size", 2), grad_accum=kw.get("grad_accum", 1), rank=rank,
                         world_size=world, seed=kw.get("seed", 3))


def test_schedule_ranks_partition_each_epoch():
    ranks = [schedule(r, world=2) for r in range(2)]
    epoch0 = [i for step in range(0, 3) for s in ranks for i in s.indices(step, 0)][:10]
    assert sorted(epoch0) == list(range(10))  # every block once per epoch, across ranks


def test_schedule_is_a_pure_function_of_step():
    fresh, used = schedule(1, world=2, grad_accum=2), schedule(1, world=2, grad_accum=2)
    for step in range(7):  # walk one through several epochs; the other jumps straight to the end
        for micro in range(2):
            used.indices(step, micro)
    assert used.indices(7, 1) == fresh.indices(7, 1)
    assert schedule(0, 1).indices(0, 0) != schedule(0, 1, seed=4).indices(0, 0) or \
        schedule(0, 1).indices(1, 0) != schedule(0, 1, seed=4).indices(1, 0)


def test_steps_for_epochs_rounds_up():
    assert steps_for_epochs(num_blocks=10, epochs=1.0, blocks_per_step=4) == 3
    assert steps_for_epochs(num_blocks=10, epochs=0.01, blocks_per_step=4) == 1


def test_lr_schedules():
    cosine = lr_lambda("cosine", warmup_steps=2, total_steps=12)
    assert cosine(0) == pytest.approx(1 / 3) and cosine(1) == pytest.approx(2 / 3)
    assert cosine(2) == pytest.approx(1.0) and cosine(12) == pytest.approx(0.0)
    assert lr_lambda("linear", 0, 10)(5) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 10)(9) == 1.0
