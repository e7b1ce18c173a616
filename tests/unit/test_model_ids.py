"""Mixes as models: the inline model-id syntax (lerpray/model_ids.py), presets in the serve config, and how a
request's model id and `interpolation` combine (lerpray.steering.resolve, through lerpray/serve/protocol.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from lerpray.mixing import AnchorLayout, MixError, resolve_mix
from lerpray.model_ids import format_inline_mix, inline_spec, parse_inline_mix
from lerpray.serve.config import ServeArgs
from lerpray.serve.errors import ApiError, to_api_error
from lerpray.serve.protocol import generation_request, mix_context, pick
from lerpray.serve.schemas import CompletionRequest
from lerpray.steering import MixContext, resolve

pytestmark = pytest.mark.unit

LAYOUT = AnchorLayout(
    anchors=("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal"),
    attributes={"sentiment": ("sentiment.negative", "sentiment.positive"),
                "formality": ("formality.informal", "formality.formal")},
)
INLINE = MixContext(LAYOUT, None, served="lerpray")  # no extrapolation


def inline_coeffs(spec: str) -> tuple[float, ...]:
    return resolve(INLINE, model=f"lerpray:{spec}").coeffs


PRESETS = {"lerpray-upbeat": {"alpha": {"sentiment": 0.9}},
           "lerpray-formal-ish": {"alpha": {"sentiment": 0.5, "formality": 0.8}, "lambda": {"sentiment": 0.25,
                                                                                           "formality": 0.75}}}


@pytest.mark.parametrize(
    ("spec", "mix"),
    [
        ("sentiment=0.8,formality=0.3", {"alpha": {"sentiment": 0.8, "formality": 0.3}}),
        ("alpha:sentiment=0.8", {"alpha": {"sentiment": 0.8}}),
        ("sentiment=0.8,formality=0.3;lambda:sentiment=0.6,formality=0.4",
         {"alpha": {"sentiment": 0.8, "formality": 0.3}, "lambda": {"sentiment": 0.6, "formality": 0.4}}),
        ("anchors:sentiment.positive=0.7,sentiment.negative=0.3",
         {"anchors": {"sentiment.positive": 0.7, "sentiment.negative": 0.3}}),
        ("sentiment=1.5;extrapolate", {"alpha": {"sentiment": 1.5}, "extrapolate": True}),
        (" sentiment = .5 ", {"alpha": {"sentiment": 0.5}}),
        ("sentiment=1e-1", {"alpha": {"sentiment": 0.1}}),
    ],
)
def test_inline_syntax(spec, mix):
    assert parse_inline_mix(spec) == mix


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "expected name=number"),
        ("sentiment", "expected name=number"),
        ("sentiment=high", "'high' is not a number"),
        ("sentiment=nan", "is not a number"),
        ("sentiment=0.5,sentiment=0.6", "given twice"),
        ("sentiment=0.5;sentiment=0.6", "needs a kind"),
        ("sentiment=0.5;alpha:formality=0.2", "'alpha' is given twice"),
        ("weights:sentiment.positive=1", "unknown section 'weights'"),
        ("sentiment=0.5;extrapolate;extrapolate", "given twice"),
    ],
)
def test_inline_syntax_errors_are_on_the_model_field(spec, fragment):
    with pytest.raises(MixError, match=fragment) as err:
        parse_inline_mix(spec)
    api = to_api_error(err.value)
    assert (api.status, api.json()["error"]["param"], api.json()["error"]["code"]) == (
        400, "model", "invalid_interpolation")


def test_inline_mix_errors_quote_the_json_path():
    with pytest.raises(MixError) as err:
        inline_coeffs("sentiment=0.5,nope=1")
    assert err.value.field == "model"
    assert "interpolation.alpha.nope: unknown attribute; this anchor set has: sentiment, formality" in str(err.value)
    with pytest.raises(MixError, match="does not allow extrapolation"):
        inline_coeffs("sentiment=1.5;extrapolate")


def test_inline_mix_equals_the_interpolation_object():
    spec = "sentiment=0.8,formality=0.3;lambda:sentiment=0.6,formality=0.4"
    assert inline_coeffs(spec) == resolve_mix(parse_inline_mix(spec), LAYOUT, None)
    assert inline_spec("lerpray:" + spec, "lerpray") == spec
    assert inline_spec("lerpray-x:" + spec, "lerpray") is None
    assert inline_spec("lerpray", "lerpray") is None


NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=",;:="), min_size=1,
                max_size=12).filter(lambda s: s.strip() == s)
VALUES = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@given(alpha=st.dictionaries(NAMES, VALUES, min_size=1, max_size=4),
       lam=st.none() | st.dictionaries(NAMES, VALUES, min_size=1, max_size=4), extrapolate=st.booleans())
def test_format_then_parse_is_the_identity(alpha, lam, extrapolate):
    mix = {"alpha": alpha, **({"lambda": lam} if lam else {}), **({"extrapolate": True} if extrapolate else {})}
    assert parse_inline_mix(format_inline_mix(mix)) == mix


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_a_mix_error(spec):
    try:
        inline_coeffs(spec)
    except MixError as err:
        assert err.field == "model"


# ---- presets and model ids in requests ------------------------------------------------------------------------


def args(**kw) -> ServeArgs:
    return ServeArgs(anchors="x", presets=PRESETS, **kw)


def test_presets_are_validated_when_the_config_loads():
    with pytest.raises(ValidationError, match=r"presets\.p\.alpah"):
        ServeArgs(anchors="x", presets={"p": {"alpah": {"sentiment": 0.9}}})
    with pytest.raises(ValidationError, match="no ':'"):
        ServeArgs(anchors="x", presets={"lerpray:sentiment=1": {"alpha": {"sentiment": 0.9}}})
    with pytest.raises(ValidationError, match="not the served id"):
        ServeArgs(anchors="x", presets={"lerpray": {"alpha": {"sentiment": 0.9}}})


def test_presets_are_checked_against_the_anchor_set_at_startup():
    coeffs = {name: mix.coeffs for name, mix in mix_context(args(), LAYOUT).presets.items()}
    assert coeffs["lerpray-upbeat"] == pytest.approx((0.9, 0.1, 0.0, 0.0))
    assert coeffs["lerpray-formal-ish"] == pytest.approx((0.125, 0.125, 0.6, 0.15))
    bad = ServeArgs(anchors="x", presets={"p": {"alpha": {"humor": 0.9}}})
    with pytest.raises(ValueError, match=r"presets\.p\.alpha\.humor: unknown attribute; this anchor set has"):
        mix_context(bad, LAYOUT)
    far = ServeArgs(anchors="x", presets={"p": {"alpha": {"sentiment": 1.5}, "extrapolate": True}}, extrapolation=None)
    with pytest.raises(ValueError, match=r"presets\.p\.extrapolate: this server does not allow extrapolation"):
        mix_context(far, LAYOUT)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, (0.25, 0.25, 0.25, 0.25)),
        ("lerpray", (0.25, 0.25, 0.25, 0.25)),
        ("lerpray-upbeat", (0.9, 0.1, 0.0, 0.0)),
        ("lerpray:sentiment=0.2", (0.2, 0.8, 0.0, 0.0)),
        ("lerpray:anchors:formality.formal=1", (0.0, 0.0, 1.0, 0.0)),
    ],
)
def test_model_ids_name_mixes(model, expected):
    assert resolve(mix_context(args(), LAYOUT), model=model).coeffs == pytest.approx(expected)


def test_interpolation_overrides_the_model_ids_mix():
    body = CompletionRequest(prompt="x", model="lerpray-upbeat", interpolation={"alpha": {"formality": 1.0}})
    assert generation_request(body, args(), mix_context(args(), LAYOUT)).coeffs == (0.0, 0.0, 1.0, 0.0)
    with pytest.raises(MixError) as err:  # a bad model id is an error even when interpolation overrides its mix
        generation_request(CompletionRequest(prompt="x", model="lerpray:nope=1", interpolation={"alpha": {
            "sentiment": 1.0}}), args(), mix_context(args(), LAYOUT))
    assert err.value.field == "model"


def test_unknown_model_ids_get_404_listing_what_is_served():
    with pytest.raises(ApiError) as err:
        pick({"lerpray": SimpleNamespace(args=args())}, "gpt-4o" + "x" * 500)
    error = err.value.json()["error"]
    assert (err.value.status, error["param"], error["code"]) == (404, "model", "model_not_found")
    assert "'lerpray', 'lerpray-upbeat', 'lerpray-formal-ish'" in error["message"]
    assert "lerpray:<mix>" in error["message"] and len(error["message"]) < 400


def test_the_presets_example_in_cluster_serve_yaml_is_valid():
    """cluster/serve.yaml shows presets commented out (its anchor set is not known here): uncommented, they load."""
    lines = (Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# presets:"))
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        block.append(line.replace("# ", "", 1))
    example = ServeArgs(anchors="x", **yaml.safe_load("\n".join(block)))
    assert set(mix_context(example, LAYOUT).presets) == {"lerpray-upbeat", "lerpray-gloomy"}
