"""`lerpray serve --anchors URI [--host 127.0.0.1] [--port 8000] [--config FILE] [--kv-cache-bytes 2GiB]
[--kv-cache-fraction F] [--context-length N]`.

Runs exactly what `serve run` runs: a Serve config (FILE, e.g. cluster/serve.yaml, or a minimal one) with the
anchor set, host and port from the flags written into it, so the CLI and the YAML cannot drift apart. It blocks
until Ctrl-C, then shuts Serve down.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

from lerpray.configs import absolute_uri
from lerpray.kv_config import add_kv_flags, kv_flags

__all__ = ["APP_IMPORT_PATH", "add_parsers", "serve_config"]

APP_IMPORT_PATH = "lerpray.serve.app:build_app"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an anchor set: OpenAI-compatible HTTP on Ray Serve",
        description="Serve an anchor set over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
        "/v1/models) on Ray Serve. Same as `serve run FILE` with the flags written into FILE's app args.",
    )
    parser.add_argument("--anchors", help="anchor-set URI (folder or s3://bucket/prefix); overrides the config's")
    parser.add_argument("--host", help=f"address to listen on (default: the config's, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"HTTP port (default: the config's, else {DEFAULT_PORT})")
    parser.add_argument("--config", type=Path, help="a Serve config YAML such as cluster/serve.yaml")
    add_kv_flags(parser, "the config's")
    parser.set_defaults(func=_handle)


def serve_config(
    config: dict[str, Any] | None, *, anchors: str | None, host: str | None, port: int | None,
    engine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Serve config to run: `config` (or a minimal one) with the flags applied to every lerpray app (`engine`:
    args such as kv_cache_bytes written over the app's).

    Raises ValueError naming what to fix (no lerpray app, no anchor set, invalid args).
    """
    from lerpray.serve.config import ServeArgs

    merged = copy.deepcopy(config) if config else {"applications": [_minimal_app()]}
    http = merged.setdefault("http_options", {})
    http["host"] = host or http.get("host", DEFAULT_HOST)
    http["port"] = port or http.get("port", DEFAULT_PORT)
    apps = [a for a in merged.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH]
    if not apps:
        raise ValueError(f"the config has no application with import_path {APP_IMPORT_PATH}; add one")
    for app in apps:
        args = app.setdefault("args", {})
        if anchors:
            args["anchors"] = anchors
        if {"kv_cache_bytes", "kv_cache_fraction"} & set(engine or {}):  # a budget flag replaces the config's
            args.pop("kv_cache_bytes", None), args.pop("kv_cache_fraction", None)
        args.update(engine or {})
        if not args.get("anchors"):
            raise ValueError("no anchor set: pass --anchors URI or set args.anchors in the config")
        args["anchors"] = absolute_uri(args["anchors"])  # replicas do not run in this directory
        ServeArgs.model_validate(args)  # fail here, with the field named, rather than in every replica
    return merged


def _minimal_app() -> dict[str, Any]:
    return {"name": "lerpray", "route_prefix": "/", "import_path": APP_IMPORT_PATH, "args": {}}


def _handle(args: argparse.Namespace) -> int:
    import yaml
    from ray.serve.schema import ServeDeploySchema
    from ray.serve.scripts import cli as serve_cli

    config = None
    if args.config is not None:
        config = yaml.safe_load(args.config.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"{args.config} is not a Serve config (a YAML mapping with `applications`)")
    merged = serve_config(config, anchors=args.anchors, host=args.host, port=args.port, engine=kv_flags(args))
    ServeDeploySchema.model_validate(merged)
    with tempfile.TemporaryDirectory(prefix="lerpray-serve-") as tmp:
        path = Path(tmp) / "serve.yaml"
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        http = merged["http_options"]
        print(f"lerpray serve: http://{http['host']}:{http['port']}/v1 (Ctrl-C to stop)", flush=True)
        serve_cli.main(["run", str(path)], prog_name="serve", standalone_mode=False)
    return 0
