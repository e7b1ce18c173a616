"""`lerpray submit train|batch|eval CONFIG` and `lerpray jobs status|logs|stop ID`, through the Ray Jobs API.

    lerpray submit train jobs/configs/train_gpu_s3.yaml --address http://HEAD:8265 --follow
    lerpray submit batch my-batch.yaml --address http://HEAD:8265 --working-dir . -- --some-job-flag
    lerpray jobs status raysubmit_XXXX --address http://HEAD:8265

The address is the head's dashboard (default port 8265; RAY_API_SERVER_ADDRESS is read when --address is not
given). What gets uploaded is described in lerpray/submit/spec.py and cluster/README.md. Exit status: 0 submitted (or,
with --follow, SUCCEEDED), 1 FAILED or STOPPED, 2 a bad config, address or job id.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from lerpray.submit.spec import (
    JOB_COMMANDS,
    SubmitError,
    build_job,
    exit_code,
    normalize_address,
    parse_runtime_env_json,
)

__all__ = ["add_parsers"]

POLL_S = 1.0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="submit a train / batch / eval job to a Ray cluster (Ray Jobs API)",
        description="Submit `python -m lerpray train|batch|eval sweep CONFIG` to a running Ray cluster, shipping "
        "this lerpray package and the config.",
        epilog="Arguments after `--` are passed to the entrypoint, e.g. `lerpray submit train CONFIG --address "
        "http://HEAD:8265 -- --overwrite`.",
    )
    submit.add_argument("kind", choices=sorted(JOB_COMMANDS), help="which job: " + ", ".join(
        f"{k} (lerpray {' '.join(v)})" for k, v in JOB_COMMANDS.items()))
    submit.add_argument("config", type=Path, help="the job's YAML (see jobs/configs/)")
    _add_address(submit)
    submit.add_argument("--follow", action="store_true", help="stream the job's logs and exit with its status")
    submit.add_argument("--working-dir", type=Path, default=None, help="upload this folder (with the config and "
                        "any small data files it names inside) as the job's working dir; default: only the config, "
                        "so paths in the config must be s3:// URIs or absolute paths every node can reach")
    submit.add_argument("--runtime-env-json", default=None, metavar="JSON", help='extra runtime_env fields, e.g. '
                        '\'{"env_vars": {"HF_TOKEN": "..."}, "pip": ["..."]}\' (env_vars merged, py_modules added)')
    submit.add_argument("--no-ship-lerpray", dest="ship_package", action="store_false", help="do not upload this "
                        "lerpray package; use the one installed on the cluster")
    submit.add_argument("--submission-id", default=None, help="the job's id (default: one chosen by Ray)")
    submit.set_defaults(func=_submit, job_args=[])
    _pass_through_after_dashes(submit)

    jobs = subparsers.add_parser("jobs", help="status, logs or stop of a submitted job")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("status", _status, "print a job's status and message"),
        ("logs", _logs, "print a job's logs (--follow: stream them and exit with its status)"),
        ("stop", _stop, "ask a running job to stop"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("job_id", help="the submission id `lerpray submit` printed (raysubmit_...)")
        _add_address(action)
        if name == "logs":
            action.add_argument("--follow", action="store_true", help="stream until the job ends")
        action.set_defaults(func=handler)


def _pass_through_after_dashes(parser: argparse.ArgumentParser) -> None:
    """Hand everything after `--` to the entrypoint untouched (as `job_args`), wherever the options are.

    argparse cannot do this alone under a subcommand: a `nargs="*"` positional is filled, empty, by the first
    positionals it meets, so `submit train CFG --follow -- --overwrite` would reject `--overwrite`.
    """
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        cut = args.index("--") if "--" in args else len(args)
        namespace, rest = parse(args[:cut], namespace)
        namespace.job_args = args[cut + 1:]
        return namespace, rest

    parser.parse_known_args = parse_known_args


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        # Not RAY_ADDRESS: lerpray (like ray.init) reads that as the GCS address, not the dashboard's URL.
        default=os.environ.get("RAY_API_SERVER_ADDRESS"),
        help="the head's Jobs API (dashboard), http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)",
    )


def _submit(args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    extra_env = parse_runtime_env_json(args.runtime_env_json)
    with tempfile.TemporaryDirectory(prefix="lerpray-job-") as staging:
        spec = build_job(
            args.kind, args.config, staging_dir=Path(staging), working_dir=args.working_dir,
            job_args=tuple(args.job_args), runtime_env=extra_env, ship_package=args.ship_package,
        )
        client = _client(address)
        job_id = _call(address, None, client.submit_job, entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                       metadata=spec.metadata, submission_id=args.submission_id)
    print(job_id, flush=True)
    if not args.follow:
        print(f"follow it with: lerpray jobs logs {job_id} --follow --address {address}", file=sys.stderr)
        return 0
    return _follow(client, address, job_id)


def _status(args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    info = _call(address, args.job_id, _client(address).get_job_info, args.job_id)
    print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    client = _client(address)
    if args.follow:
        _call(address, args.job_id, client.get_job_info, args.job_id)  # an unknown id fails here, in one line
        return _follow(client, address, args.job_id)
    print(_call(address, args.job_id, client.get_job_logs, args.job_id), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    client = _client(address)
    if _call(address, args.job_id, client.stop_job, args.job_id):
        print(f"{args.job_id}: stop requested")
    else:
        status = _call(address, args.job_id, client.get_job_status, args.job_id)
        print(f"{args.job_id}: not running ({status})")
    return 0


def _follow(client, address: str, job_id: str) -> int:
    """Stream the job's logs until it ends; its exit code (0 SUCCEEDED, 1 FAILED/STOPPED)."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as err:  # the log stream broke (head restarting, proxy timeout, ...): fall back to polling
        print(f"lerpray: log stream ended early ({_one_line(err)}); waiting for the job to finish", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (lerpray jobs stop {job_id} --address {address})",
              file=sys.stderr)
        return 130
    while not (info := _call(address, job_id, client.get_job_info, job_id)).status.is_terminal():
        time.sleep(POLL_S)  # the stream can close a moment before the status turns terminal
    print(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.message else ""), file=sys.stderr)
    return exit_code(info.status)


def _client(address: str):
    """A JobSubmissionClient, or a one-line SubmitError when the head cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address}: check the address and that the head runs the "
            "dashboard (ray start --head --include-dashboard=true, port 8265 by default)"
        ) from None
    except Exception as err:  # auth, TLS and version errors come as RuntimeError / RayError subclasses
        raise SubmitError(f"the Ray Jobs API at {address} refused the connection: {_one_line(err)}") from None


def _call(address: str, job_id: str | None, method, *args, **kwargs):
    """Call a client method, turning Ray's HTTP errors into one-line SubmitErrors."""
    import requests

    try:
        return method(*args, **kwargs)
    except (ConnectionError, requests.RequestException) as err:  # requests' errors are not ConnectionErrors
        raise SubmitError(f"lost the connection to the Ray Jobs API at {address}: {_one_line(err)}") from None
    except Exception as err:
        text = str(err)
        if job_id is not None and "status code 404" in text:
            raise SubmitError(f"no job {job_id!r} on {address}: check the id (`ray job list --address "
                              f"{address}` lists them)") from None
        if "status code" not in text and not type(err).__module__.startswith("ray"):
            raise
        raise SubmitError(f"the Ray Jobs API at {address} refused: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:500]
