"""Outside the gpu tier a skip fails the run (tests/skip_policy.py): pytest in a subprocess with that plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]  # holds skip_policy.py


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester.runpytest_subprocess("-p", "skip_policy", "-p", "no:cacheprovider", "-o", "markers=gpu: CUDA",
                                         timeout=120)


def test_skips_fail_unless_marked_gpu_and_xfail_is_kept(pytester, monkeypatch):
    pytester.makepyfile(test_one="""
import pytest

def test_missing_package():
    pytest.importorskip("no_such_package_lerpray")

@pytest.mark.skipif(True, reason="no such tool here")
def test_conditional():
    pass

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_on_gpu():
    pass

@pytest.mark.xfail(strict=True, reason="known")
def test_known():
    assert False

def test_fine():
    pass
""")
    result = run(pytester, monkeypatch)
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)  # a skipif fails in its setup
    assert result.ret == 1
    for reason in ("no_such_package_lerpray", "no such tool here"):
        result.stdout.fnmatch_lines([f"*skipped outside the gpu tier*{reason}*"])


def test_a_module_level_importorskip_is_a_collection_error(pytester, monkeypatch):
    pytester.makepyfile(test_two="import pytest\n\nmissing = pytest.importorskip('no_such_package_lerpray')\n\n"
                                 "def test_x():\n    pass\n")
    result = run(pytester, monkeypatch)
    result.assert_outcomes(errors=1)
    assert result.ret not in (0, None)
    result.stdout.fnmatch_lines(["*skipped outside the gpu tier*no_such_package_lerpray*"])
