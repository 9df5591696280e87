#!/usr/bin/env bash
# A local Ray head for trying `ray job submit` on one machine (dashboard/Jobs API on 127.0.0.1).
# Thin wrapper: the implementation is `aide-ray cluster` (aide_ray/cli/cluster.py, aide_ray/distributed/head.py).
#
#   cluster/local.sh up [--num-cpus 4] [--port 6379] [--dashboard-port 8265] [--temp-dir DIR] [--auth token]
#   cluster/local.sh status [--port 6379]
#   cluster/local.sh down [--port 6379]
#
# PYTHON selects the interpreter (default: the repository's .venv, else python3).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^(up|down|status)$ ]]; then
    echo "usage: $0 up|down|status [options]   (options: aide-ray cluster ACTION --help)" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    python="$(command -v python3)"
fi
exec "$python" -m aide_ray.cli.main cluster "$@"
