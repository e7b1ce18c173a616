"""The one Serve app every test in this package talks to (conftest.py starts it once for the package): a tiny
anchor set with a synthetic sentiment calibration, an API key, presets and request limits.

One app instead of one per module saves a Ray start, a Serve start and a replica load per module (~27 s each here).
"""

from __future__ import annotations

KEY_ENV, KEY = "LERPRAY_TEST_API_KEY", "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CAP, BODY_LIMIT = 48, 16 * 1024
MIX = {"alpha": {"sentiment": 0.8, "formality": 0.3}, "lambda": {"sentiment": 0.6, "formality": 0.4}}
PRESETS = {"lerpray-upbeat": {"alpha": {"sentiment": 0.9}}, "lerpray-mix": MIX}

S = "sentiment"
# Synthetic: sentiment's mean score = alpha - 0.5, known on alpha in [-1, 2] (reachable [-0.5, 0.5] in the hull);
# formality has no curve, so a formality target is refused.
CURVES = {"curves": {S: {"scorer": "vader", "alphas": [-1, 0, 1, 2], "fit": [-1.5, -0.5, 0.5, 1.5]}},
          "scorers": {S: {"spec": "vader"}}}  # fmt: skip
