"""End-to-end sweeps on a tiny random Llama with three attributes: the CLI writes the CSV (every generation, every
score), perplexity per mix, the plots and the report; results map back to the right mix; perplexity matches the
model's own loss; the HTTP backend sends the right requests; `lerpray eval weights` writes its heatmap."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import torch
import yaml

from lerpray.cli import main as cli_main
from lerpray.configs import SamplingSettings
from lerpray.eval.backends import generate_http
from lerpray.eval.config import SweepConfig
from lerpray.eval.grid import GridPoint, SweepError, alpha_grid, make_jobs
from lerpray.eval.sweep import run_sweep

pytestmark = pytest.mark.component

ANCHORS = ("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal", "humor.humorous",
           "humor.serious")  # fmt: skip
HELDOUT = ["The cat sat on the mat.", "Rain fell on the quiet town all day.", "We walked home after the film."]


@pytest.fixture(scope="module")
def three_attribute_set(tiny_llama_model, tiny_anchor_dirs, tmp_path_factory):
    """(anchors folder, base model folder): conftest's four random anchors plus a humor attribute whose poles reuse
    the sentiment adapters swapped (humorous = negative, serious = positive), so their updates are known to match."""
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity
    from lerpray.testing import tiny_tokenizer

    root = tmp_path_factory.mktemp("eval-set")
    tiny_llama_model.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    adapters = {**tiny_anchor_dirs, "humor.humorous": tiny_anchor_dirs["sentiment.negative"],
                "humor.serious": tiny_anchor_dirs["sentiment.positive"]}  # fmt: skip
    assert tuple(adapters) == ANCHORS
    build_anchor_set(model_identity(tiny_llama_model, "tiny-llama"), adapters, root / "anchors")
    return str(root / "anchors"), str(root / "base")


@pytest.fixture(scope="module")
def sweep_out(three_attribute_set, tmp_path_factory):
    """One sweep through the CLI: alpha grid (2 attributes x 9 alphas) + a simplex (6 mixes), 2 prompts x 2 samples."""
    anchors, base = three_attribute_set
    root = tmp_path_factory.mktemp("sweep")
    (root / "heldout.txt").write_text("\n".join(HELDOUT))
    config = {
        "out": str(root / "out"), "anchors": anchors, "base_model": base, "batch_size": 64,
        "grids": [{"kind": "alpha", "attributes": ["sentiment", "formality"]},
                  {"kind": "simplex", "attributes": ["sentiment", "formality", "humor"], "steps": 2}],
        "prompts": {"limit": 2, "samples": 2, "seed": 7},
        "sampling": {"max_tokens": 8, "temperature": 0.8, "top_p": 0.95},
        "scorers": ["vader", {"spec": "fkgl", "attribute": "formality"}],
        "perplexity": {"texts": str(root / "heldout.txt"), "batch_size": 2},
    }  # fmt: skip
    (root / "sweep.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["eval", "sweep", str(root / "sweep.yaml")]) == 0
    return root / "out"


def test_csv_holds_every_generation_with_every_score(sweep_out):
    table = pd.read_csv(sweep_out / "generations.csv")
    assert len(table) == (18 + 6) * 2 * 2
    assert table.groupby("mix_id").size().eq(4).all() and table["mix_id"].nunique() == 24
    assert {"score.vader", "score.fkgl", "text", "alpha.sentiment", "lambda.humor"} <= set(table.columns)
    assert table["score.vader"].between(-1, 1).all()
    alphas = table.loc[table["grid"] == "alpha", "x"]
    assert table.loc[alphas.index, "extrapolate"].tolist() == [not 0 <= a <= 1 for a in alphas]
    assert sorted(table["seed"].unique()) == [7, 8]  # sample s uses seed 7 + s at every mix
    simplex = table[table["grid"] == "simplex"]
    lams = simplex[["lambda.sentiment", "lambda.formality", "lambda.humor"]]
    assert (lams.sum(axis=1).round(9) == 1.0).all() and simplex["mix_id"].nunique() == 6


def test_plots_and_report_are_written(sweep_out):
    for name in ("scores_vs_alpha", "entanglement", "perplexity_vs_alpha", "ternary_sentiment_formality_humor"):
        png = sweep_out / f"{name}.png"
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (sweep_out / "report.md").read_text()
    for section in ("## Attribute control", "## Entanglement", "## Perplexity", "![ternary_sentiment_formality_humor]"):
        assert section in report
    assert "| sentiment | vader |" in report and "| formality | fkgl |" in report
    effects = pd.read_csv(sweep_out / "effects.csv")
    assert len(effects) == 2 * 2  # swept attributes x scorers


def test_replot_rebuilds_tables_plots_and_report_from_the_csvs(sweep_out, tmp_path, capsys):
    """`--replot` recomputes everything downstream of generations.csv and perplexity.csv; it generates nothing."""
    before = {name: pd.read_csv(sweep_out / name) for name in ("summary.csv", "effects.csv")}
    report = (sweep_out / "report.md").read_text()
    for path in [*sweep_out.glob("*.png"), sweep_out / "report.md", sweep_out / "effects.csv", sweep_out / "summary.csv"]:
        path.unlink()
    config = sweep_out.parent / "sweep.yaml"
    assert cli_main(["eval", "sweep", str(config), "--replot", "--anchors", str(tmp_path / "no-such-set")]) == 0
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(sweep_out / name), frame)
    assert (sweep_out / "report.md").read_text() == report
    assert (sweep_out / "ternary_sentiment_formality_humor.png").stat().st_size > 5000
    assert cli_main(["eval", "sweep", str(config), "--replot", "--out", str(tmp_path / "empty")]) != 0
    assert "has no generations.csv or sweep.json: --replot needs a finished sweep there" in capsys.readouterr().err


def test_perplexity_per_mix_and_base(sweep_out):
    ppl = pd.read_csv(sweep_out / "perplexity.csv")
    assert len(ppl) == 24 + 1 and (ppl["perplexity"] > 1).all()
    by_mix = ppl.set_index("mix_id")["perplexity"]
    assert by_mix["alpha:sentiment=0"] != pytest.approx(by_mix["alpha:sentiment=1"])  # the anchors do differ
    assert "Base model (no anchors)" in (sweep_out / "report.md").read_text()


def test_rows_match_a_lone_generation_of_their_mix(sweep_out, three_attribute_set):
    """Batched with 23 other mixes, a row's text is what its mix, prompt and seed give when generated alone."""
    from lerpray.eval.config import BUILTIN_PROMPTS
    from lerpray.mixing import ExtrapolationBounds, resolve_mix
    from lerpray.model import Engine, GenerationRequest, SamplingParams

    anchors, base = three_attribute_set
    engine = Engine.from_uri(anchors, base_model=base, max_batch_size=1)
    table = pd.read_csv(sweep_out / "generations.csv", keep_default_na=False)
    for mix_id in ("alpha:formality=-0.5", "alpha:sentiment=2"):
        row = table[(table["mix_id"] == mix_id) & (table["prompt_id"] == 1) & (table["sample"] == 1)].iloc[0]
        attribute, alpha = row["attribute"], float(row["x"])
        mix = {"alpha": {attribute: alpha}, "extrapolate": True}
        coeffs = resolve_mix(mix, engine.layout, ExtrapolationBounds())
        sampling = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8, seed=int(row["seed"]))
        (alone,) = engine.generate([GenerationRequest(coeffs=coeffs, prompt=BUILTIN_PROMPTS[1], sampling=sampling)])
        assert alone.text == row["text"], mix_id


def test_perplexity_matches_the_models_own_loss(three_attribute_set):
    """All-zero coefficients = the base model: summed NLL equals HF's mean loss x predicted tokens, padding included."""
    from lerpray.eval.perplexity import encode_texts, mix_nll
    from lerpray.model.engine import Engine

    anchors, base = three_attribute_set
    engine = Engine.from_uri(anchors, base_model=base)
    encoded = encode_texts(engine.tokenizer, HELDOUT, max_length=64)
    total, count = mix_nll(engine.imodel, encoded, [0.0] * 6, batch_size=3)  # one padded batch
    expected = 0.0
    with torch.no_grad(), engine.imodel.merged(torch.zeros(6)):
        for ids in encoded:
            x = torch.tensor([ids])
            expected += float(engine.model(input_ids=x, labels=x).loss) * (len(ids) - 1)
    assert count == sum(len(ids) - 1 for ids in encoded)
    assert total == pytest.approx(expected, rel=1e-4)


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/completions that echoes the mix; alpha 9 gets a 400 like lerpray's server."""

    bodies: list[dict] = []
    auth: list[str | None] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        type(self).auth.append(self.headers.get("Authorization"))
        alpha = next(iter(body["interpolation"]["alpha"].values()))
        if alpha == 9:
            reply, status = {"error": {"message": "interpolation.alpha.sentiment: must be in [-1, 2]"}}, 400
        else:
            text = f"{body['prompt']}|{alpha}|{body['seed']}"
            reply = {"choices": [{"text": text, "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 5}}  # fmt: skip
            status = 200
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    _Stub.bodies, _Stub.auth = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_backend_sends_each_mix_with_its_seed(stub_server):
    points = alpha_grid(["sentiment"], [0.0, 0.5, 2.0])
    jobs = make_jobs(len(points), 2, 2, seed=3)
    results = generate_http(stub_server, [p.mix() for p in points], ["p0", "p1"], jobs, SamplingSettings(max_tokens=5),
                            model="lerpray", concurrency=3)  # fmt: skip
    assert [r.text for r in results] == [f"p{j.prompt}|{points[j.point].x}|{j.seed}" for j in jobs]
    assert results[0].completion_tokens == 5
    sent = {json.dumps(b["interpolation"], sort_keys=True) for b in _Stub.bodies}
    assert json.dumps({"alpha": {"sentiment": 2.0}, "extrapolate": True, "lambda": {"sentiment": 1.0}},
                      sort_keys=True) in sent  # fmt: skip
    assert all(b["model"] == "lerpray" and b["max_tokens"] == 5 and "top_k" not in b and "min_tokens" not in b
               for b in _Stub.bodies)  # fmt: skip
    _Stub.bodies.clear()
    generate_http(stub_server, [points[0].mix()], ["p0"], make_jobs(1, 1, 1, 0),
                  SamplingSettings(max_tokens=5, min_tokens=4), model="lerpray")  # a calibration's replies, over HTTP
    assert [b["min_tokens"] for b in _Stub.bodies] == [4]
    assert set(_Stub.auth) == {None}
    bad = [GridPoint("alpha:sentiment=9", "alpha", "sentiment", 9.0, {"sentiment": 9.0}, {"sentiment": 1.0})]
    with pytest.raises(SweepError, match="answered 400.*must be in"):
        generate_http(stub_server, [p.mix() for p in bad], ["p"], make_jobs(1, 1, 1, 0), SamplingSettings())


def test_sweep_through_a_server_without_a_local_model(stub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    config = SweepConfig(out=tmp_path, server=stub_server, grids=[{"kind": "alpha", "attributes": ["sentiment"]}],
                         prompts={"limit": 3, "samples": 1}, scorers=["fkgl"], server_api_key_env="STUB_KEY")  # fmt: skip
    outputs = run_sweep(config)
    table = pd.read_csv(outputs.generations)
    assert len(table) == 9 * 3 and table["score.fkgl"].notna().all()
    assert (tmp_path / "scores_vs_alpha.png").stat().st_size > 0 and outputs.perplexity is None
    assert set(_Stub.auth) == {"Bearer sk-test"}


def test_weights_command_writes_json_and_heatmap(three_attribute_set, tmp_path, capsys):
    anchors, _ = three_attribute_set
    assert cli_main(["eval", "weights", anchors, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "weights.json").read_text())
    assert data["anchors"] == list(ANCHORS) and sorted(data["per_layer"]) == ["0", "1"]
    assert all(data["overall"][i][i] == pytest.approx(1.0) for i in range(6))
    assert data["overall"][4][1] == pytest.approx(1.0) and data["overall"][5][0] == pytest.approx(1.0)  # same adapter
    assert abs(data["overall"][0][1]) < 0.5  # independent random anchors are far from parallel
    assert (tmp_path / "weights_cosine.png").stat().st_size > 5000
    assert "cosine of the anchors' updates" in capsys.readouterr().out
