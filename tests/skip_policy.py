"""pytest plugin: outside the gpu tier a skip is a failure.

A test that cannot run here (a missing package, tool or service) must fail and say what is missing, so a broken
install cannot turn into skips and a green run. Tests marked `gpu` may still skip where there is no CUDA device
(pyproject's tiers; `make test` deselects them anyway). Expected failures (xfail) keep their outcome.

tests/conftest.py registers it; tests/unit/test_exit_status.py runs pytest in a subprocess with it.
"""

from __future__ import annotations

import pytest

WHY = "skipped outside the gpu tier: a test that cannot run here fails instead and says what is missing"


def _reason(longrepr: object) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        report.longrepr = f"{WHY} ({_reason(report.longrepr)})"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and collector.get_closest_marker("gpu") is None:  # a module-level skip or importorskip
        report.outcome = "failed"
        report.longrepr = f"{WHY} ({_reason(report.longrepr)})"
    return report
