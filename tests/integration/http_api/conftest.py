"""The package's shared app (see app.py): started once before its first test, stopped after its last."""

from __future__ import annotations

import httpx
import pytest
from serve_app import running_app

from .app import AUTH, BODY_LIMIT, CAP, CURVES, KEY, KEY_ENV, PRESETS


@pytest.fixture(scope="package")
def anchors(tmp_path_factory) -> str:
    from lerpray.anchors import open_store
    from lerpray.anchors.calibration import save_calibration
    from lerpray.testing import tiny_anchor_set

    path = str(tiny_anchor_set(tmp_path_factory.mktemp("http-api")))
    save_calibration(open_store(path), CURVES)
    return path


@pytest.fixture(scope="package")
def base_url(anchors: str):
    from lerpray.serve import ServeArgs

    args = ServeArgs(anchors=anchors, api_key_env=KEY_ENV, max_tokens_cap=CAP, default_max_tokens=8,
                     max_body_bytes=BODY_LIMIT, num_cpus=0.5, presets=PRESETS)
    with running_app(args, {KEY_ENV: KEY}) as url:
        yield url


@pytest.fixture(scope="package")
def http(base_url: str):
    """An httpx client on the app, with the API key."""
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="package")
def engine(anchors: str):
    """The in-process engine on the same set: what every reply is compared with."""
    from lerpray.model import Engine

    return Engine.from_uri(anchors)
