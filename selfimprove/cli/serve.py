"""``selfimprove serve RUN_DIR``: the run's current version behind an OpenAI-compatible API.

Switches to a newly promoted version without a restart; ``--record`` records every exchange
into the run's store for the next cycle. Settings come from the run's ``serve:`` config
section; each flag overrides one key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["register"]

#: config keys set by flags, so an invalid value names the flag
FLAGS = {"host": "--host", "port": "--port", "model_name": "--model-name",
         "api_key_env": "--api-key-env", "record": "--record",
         "max_body_bytes": "--max-body-bytes", "flush_seconds": "--flush-seconds"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run's current version (OpenAI-compatible API)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--config", type=Path, help="run config YAML: creates RUN_DIR as a new run "
                   "(v0, no cycle yet) when it holds none; `selfimprove run --resume` later "
                   "runs its cycles")
    p.add_argument("--host", help="address to bind (key: serve.host; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (key: serve.port; default 8000)")
    p.add_argument("--model-name", help="model id clients ask for (key: serve.model_name)")
    p.add_argument("--api-key-env", help="environment variable holding the API key "
                   "(key: serve.api_key_env; default SELFIMPROVE_API_KEY)")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                   help="record exchanges into the run's store (key: serve.record)")
    p.add_argument("--max-body-bytes", type=int, help="request size limit "
                   "(key: serve.max_body_bytes)")
    p.add_argument("--flush-seconds", type=float, help="journal-to-store interval "
                   "(key: serve.flush_seconds)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from selfimprove.config import RunConfig, ServeConfig, load_config, validate_overrides
    from selfimprove.errors import SelfImproveError
    from selfimprove.rundir import RunDir
    from selfimprove.runner import create_run, load_run_config
    from selfimprove.serving import RunService, build_app
    from selfimprove.serving.service import check_exposure

    run = RunDir(args.run_dir)
    if not run.holds_run():
        if args.config is None:
            raise SelfImproveError(f"{run.path} holds no run: start one with `selfimprove run`, "
                                   "or pass --config to create it here")
        create_run(load_config(args.config, RunConfig), run.path, args.config)
    elif args.config is not None:
        raise SelfImproveError(f"{run.path} already holds a run; its own config applies "
                               "(leave out --config)")
    cfg = load_run_config(run)
    data = cfg.serve.model_dump()
    data.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    serve = validate_overrides(ServeConfig, data, FLAGS)
    api_key = os.environ.get(serve.api_key_env) or None
    check_exposure(serve, api_key)
    service = RunService(run.path, cfg, serve)
    app = build_app(service, api_key)
    print(f"serving {service.model_name} from {run.path} on http://{serve.host}:{serve.port}/v1"
          + (" (recording traffic)" if serve.record else ""), file=sys.stderr, flush=True)
    uvicorn.run(app, host=serve.host, port=serve.port, log_level="warning")
    return 0
