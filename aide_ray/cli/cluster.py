"""`aide-ray cluster up|down|status`: a local Ray head for `ray job submit`.

Argument parsing and what is printed; starting, finding and stopping the head
is :mod:`aide_ray.distributed.head`. `up` starts ``ray start --head --block``
with its dashboard and Jobs API on 127.0.0.1 only; `down` stops that head
only (``down --all`` runs ``ray stop``, which stops every Ray process on the
machine); `status` shows the recorded head and ``ray status``.
"""

from __future__ import annotations

import argparse
import shlex

from aide_ray.distributed.head import (
    AUTH_MODES,
    DEFAULT_CLIENT_PORT,
    DEFAULT_DASHBOARD_AGENT_PORT,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_NUM_CPUS,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_S,
    LOOPBACK,
    ClusterError,
    HeadSpec,
    HeadState,
    head_status,
    jobs_api_url,
    start_head,
    stop_all_ray,
    stop_head,
    token_source,
)

__all__ = ["add_arguments", "run"]


def _print_started(state: HeadState, spec: HeadSpec) -> None:
    url = jobs_api_url(state.dashboard_port)
    auth_prefix = "RAY_AUTH_MODE=token " if state.auth == "token" else ""
    print(f"Ray head running (pid {state.pid}); dashboard and Jobs API on {LOOPBACK} only; "
          f"RAY_AUTH_MODE={state.auth}")
    print(f"  GCS (drivers):         {LOOPBACK}:{state.port}")
    print(f"  dashboard + Jobs API:  {url}")
    print(f"  Ray Client:            ray://{LOOPBACK}:{spec.client_port}")
    print(f"  log:                   {state.log}")
    if state.auth == "token":
        print(f"  token:                 {token_source()} (clients need RAY_AUTH_MODE=token)")
    else:
        print("  note: Ray's GCS/raylet ports listen on all interfaces and auth is off; on a machine others "
              "can reach, use --auth token (docs/security.md)")
    print("Submit a job (the working dir is uploaded without the paths in .rayignore):")
    print(f"  {auth_prefix}RAY_ADDRESS={url} ray job submit --working-dir . -- "
          "python jobs/train_aide.py epochs=2")
    print("Or run a driver against it:")
    print(f"  {auth_prefix}RAY_ADDRESS={LOOPBACK}:{state.port} python jobs/train_aide.py")
    stop = f"aide-ray cluster down --port {state.port}"
    if state.temp_dir:
        stop += f" --temp-dir {shlex.quote(state.temp_dir)}"
    print(f"Stop it:  {stop}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, default=DEFAULT_PORT, help="GCS port of the head (default: %(default)s)")
    common.add_argument("--temp-dir", default=None,
                        help="Ray temp/session folder, also holding the state and log files "
                             "(default: Ray's <tmp>/ray); keep it short: Unix socket paths are limited")
    actions = parser.add_subparsers(dest="action")
    actions.required = True
    up = actions.add_parser("up", parents=[common], help="start a head bound to 127.0.0.1")
    up.add_argument("--num-cpus", type=int, default=DEFAULT_NUM_CPUS, help="logical CPUs (default: %(default)s)")
    up.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: detected by Ray)")
    up.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT,
                    help="dashboard and Jobs API port (default: %(default)s)")
    up.add_argument("--client-port", type=int, default=DEFAULT_CLIENT_PORT,
                    help="Ray Client server port (default: %(default)s)")
    up.add_argument("--dashboard-agent-port", type=int, default=DEFAULT_DASHBOARD_AGENT_PORT,
                    help="the head's dashboard agent HTTP port, which runs submitted jobs (default: %(default)s)")
    up.add_argument("--auth", choices=AUTH_MODES, default="disabled",
                    help="RAY_AUTH_MODE of the head: 'disabled' (default, for a single-user machine: the "
                         "Jobs API is on 127.0.0.1 but Ray's gRPC ports listen on all interfaces) or 'token' "
                         "(token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, generated "
                         "if missing); see docs/security.md")
    up.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds to wait for the Jobs API (default: %(default)s)")
    down = actions.add_parser("down", parents=[common], help="stop the head that `up` started")
    down.add_argument("--all", action="store_true",
                      help="run `ray stop` instead: stops EVERY Ray process on this machine")
    down.add_argument("--timeout-s", type=float, default=60.0,
                      help="seconds to wait for a clean stop before killing (default: %(default)s)")
    actions.add_parser("status", parents=[common], help="show the head and `ray status`")


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        spec = HeadSpec(port=args.port, dashboard_port=args.dashboard_port, client_port=args.client_port,
                        dashboard_agent_port=args.dashboard_agent_port, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus, temp_dir=args.temp_dir, auth=args.auth)
        _print_started(start_head(spec, timeout_s=args.timeout_s), spec)
        return 0
    if args.action == "down":
        if args.all:
            return stop_all_ray()
        state = stop_head(args.port, args.temp_dir, timeout_s=args.timeout_s)
        print(f"stopped the Ray head on port {state.port} (pid {state.pid})")
        return 0
    if args.action == "status":
        return head_status(args.port, args.temp_dir)
    raise ClusterError(f"action must be one of ['up', 'down', 'status'], got {args.action!r}")  # pragma: no cover

