"""pytest plugin: end the test process with the session's final status, skipping the interpreter's teardown.

That teardown runs native destructors of the libraries the suite loaded (the AWS SDK inside pyarrow, which Ray Train
and Ray Data open for s3:// storage; Ray's core worker; torch) in no fixed order, and can segfault after a green run:
CI saw "1045 passed" followed by "Segmentation fault" and exit 139 on 2026-12-02 (the known class of
apache/arrow#38352). The verdict is pytest's; what follows it must not change it, and nothing may hide it.

So the exit waits for pytest to finish: `pytest_unconfigure` (trylast: after every other plugin's) reads
`session.exitstatus` as pytest's `wrap_session` left it, after every `pytest_sessionfinish` implementation ran
(fixture teardown, temporary folder cleanup, the terminal summary, which may still change the status, e.g. for
--max-warnings). When a `pytest_sessionfinish` implementation raised, there is no final status to exit with: the
process is left to end the ordinary way, so the exception's traceback is printed and the exit status is not 0.

tests/conftest.py registers it; tests/unit/test_exit_status.py runs pytest in a subprocess with it (`-p exit_status`).
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

_SESSION = pytest.StashKey[pytest.Session]()
_RAISED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session):
    """Wraps every other implementation: remembers the session, and whether any of them raised."""
    session.config.stash[_SESSION] = session
    try:
        return (yield)
    except pytest.exit.Exception:  # pytest.exit() in a hook: wrap_session sets session.exitstatus from it
        raise
    except BaseException:
        session.config.stash[_RAISED] = True
        raise


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None or config.stash.get(_RAISED, False):
        return  # no session ran to its end, or its end raised: leave the exit to Python
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(int(session.exitstatus))
