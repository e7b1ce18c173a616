"""The suite's hard exit (tests/exit_status.py) keeps pytest's verdict: each test runs pytest in a subprocess with
that plugin (`-p exit_status`, the module tests/conftest.py registers) and checks the process's exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]  # holds exit_status.py

BROKEN_TEARDOWN = """
import pytest

@pytest.fixture(scope="session")
def resource():
    yield "ready"
    raise RuntimeError("teardown of the session fixture failed")
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # pytester puts its own folder in front
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only the plugin under test, and quickly
    return pytester.runpytest_subprocess("-p", "exit_status", "-p", "no:cacheprovider", *args, timeout=120)


def test_a_passing_run_exits_0_and_a_failing_test_exits_1(pytester, monkeypatch):
    pytester.makepyfile(test_one="def test_ok():\n    assert True\n")
    result = run(pytester, monkeypatch)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)
    pytester.makepyfile(test_two="def test_bad():\n    assert 1 == 2\n")
    result = run(pytester, monkeypatch)
    assert result.ret == 1, result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)


def test_a_session_fixture_whose_teardown_raises_fails_the_run(pytester, monkeypatch):
    """Every test passes; the teardown after the last one raises."""
    pytester.makeconftest(BROKEN_TEARDOWN)
    pytester.makepyfile(test_one="def test_a(resource):\n    assert resource\n\ndef test_b(resource):\n    pass\n")
    result = run(pytester, monkeypatch)
    assert result.ret == 1, result.stdout.str()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: teardown of the session fixture failed*"])


def test_a_teardown_that_raises_in_pytests_own_sessionfinish_is_not_hidden(pytester, monkeypatch):
    """pytest.exit(returncode=0) leaves the session fixture up, so pytest's own pytest_sessionfinish tears it down
    after the status was handed to the hooks: the error must still end the process with a non-zero status."""
    pytester.makeconftest(BROKEN_TEARDOWN)
    pytester.makepyfile(test_one="import pytest\n\ndef test_a(resource):\n    pytest.exit('done', returncode=0)\n")
    result = run(pytester, monkeypatch)
    assert result.ret not in (0, None), (result.ret, result.stdout.str(), result.stderr.str())
    assert "teardown of the session fixture failed" in result.stderr.str() + result.stdout.str()


def test_a_status_set_after_the_sessionfinish_hooks_ran_is_the_exit_status(pytester, monkeypatch):
    """--max-warnings turns a green run into status 6 inside the terminal summary, after the hooks got status 0."""
    pytester.makepyfile(test_one="import warnings\n\ndef test_ok():\n    warnings.warn('careful')\n")
    result = run(pytester, monkeypatch, "--max-warnings", "0")
    result.assert_outcomes(passed=1, warnings=1)
    assert result.ret == pytest.ExitCode.MAX_WARNINGS_ERROR, result.stdout.str()
