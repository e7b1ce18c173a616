"""The quickstart's target demo without Ray: a calibration from its requests (refused when flat, with nothing
saved), then three targets sent to an OpenAI-style HTTP stand-in whose replies grow more positive with the target,
achieved means with 95 % intervals, and the calibration saved beside the set where the server reads it."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lerpray.anchors import open_store
from lerpray.anchors.calibration import CALIBRATION_NAME, read_calibration_doc
from lerpray.eval.calibration_checks import CalibrationRefused
from lerpray.quickstart.steps import ALPHAS, Generation
from lerpray.quickstart.target_demo import calibrate_from_generations, run_target_demo

pytestmark = pytest.mark.component

PROMPTS = [f"opener {i}" for i in range(6)]


def generations(step: float) -> list[Generation]:
    """VADER-like scores: prompt i's own baseline + step * alpha, two seeds (one a little higher)."""
    return [Generation(a, p, s, "some text", 8, round(0.1 * i - 0.2 + step * a + 0.01 * s, 4))
            for a in ALPHAS for i, p in enumerate(PROMPTS) for s in (0, 1)]  # fmt: skip


def test_the_demo_calibration_is_the_checked_one():
    doc = calibrate_from_generations(generations(0.5), max_tokens=32)
    curve = doc["curves"]["sentiment"]
    assert curve["alphas"] == list(ALPHAS) and curve["change"] == pytest.approx([0.0, 0.25, 0.5])
    assert doc["prompts"]["count"] == 6 and doc["prompts"]["samples"] == 2 and doc["sampling"]["max_tokens"] == 32
    with pytest.raises(CalibrationRefused, match="flat within its own noise"):
        calibrate_from_generations(generations(0.0), max_tokens=32)
    assert "partial" not in curve


def test_the_demo_calibration_carries_the_closed_loops_partial_reply_model():
    """With the base model's tokenizer (here: words) the saved calibration has the predictive loop's model."""
    def words(text, tokens):
        return [" ".join(text.split()[:k]) for k in tokens]

    doc = calibrate_from_generations(generations(0.5), max_tokens=32, prefixes=words)
    assert "partial" in doc["curves"]["sentiment"]


@pytest.fixture
def target_server():
    """Replies "Good." x k, with k rising with the requested sentiment target (VADER scores them)."""
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            target = body["interpolation"]["target"]["sentiment"]
            asked.append(target)
            text = " ".join(["It was a day."] + ["Good."] * max(0, round(10 * target)))
            reply = {"choices": [{"text": text, "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 8}}  # fmt: skip
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 64  # the demo asks 18 at once; the default backlog of 5 resets some on a busy host

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_three_targets_are_asked_and_their_achieved_means_reported(tiny_anchor_set, tmp_path, target_server):
    url, asked = target_server
    anchors = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, anchors)  # the shared set stays without a calibration
    lines: list[str] = []
    outcomes = run_target_demo(url, anchors, generations(0.5), prompts=3, samples=2, max_tokens=32, say=lines.append)
    doc = read_calibration_doc(open_store(anchors))
    assert doc is not None and doc["curves"]["sentiment"]["fit"][0] < doc["curves"]["sentiment"]["fit"][-1]
    low, high = doc["curves"]["sentiment"]["fit"][0], doc["curves"]["sentiment"]["fit"][-1]
    assert [o.target for o in outcomes] == pytest.approx([low + f * (high - low) for f in (0.1, 0.5, 0.9)], abs=1e-4)
    assert sorted(set(asked)) == [o.target for o in outcomes] and len(asked) == 3 * 3 * 2
    assert all(o.n == 6 and o.low - 1e-9 <= o.mean <= o.high + 1e-9 for o in outcomes)
    assert outcomes[0].mean < outcomes[1].mean < outcomes[2].mean  # the stand-in's replies follow the target
    assert 0.0 <= outcomes[0].alpha < outcomes[1].alpha < outcomes[2].alpha <= 1.0
    assert lines[0].startswith("      calibration (from the requests above, saved beside the set): VADER")
    assert "lerpray eval calibrate" in lines[1] and "achieved" in lines[-1] and "of the range" in lines[-1]


def test_a_refused_calibration_skips_the_targets_and_saves_nothing(tiny_anchor_set, tmp_path):
    anchors = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, anchors)
    lines: list[str] = []
    assert run_target_demo("http://127.0.0.1:9", anchors, generations(0.0), prompts=3, samples=2, max_tokens=32,
                           say=lines.append) == []  # fmt: skip
    assert lines[0].startswith("      calibration refused: sentiment: the vader score moves +0.0000")
    assert not (anchors / CALIBRATION_NAME).exists()
