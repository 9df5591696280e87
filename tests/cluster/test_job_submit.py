"""End to end: `aide-ray cluster up`, then `ray job submit` of jobs/train_aide.py, then `down`.

The head gets its own non-default ports and temp dir so it never clashes with
the session's `ray_cluster` fixture or a head someone else started, and the
module fixture always stops it (only it: by pid, not `ray stop`). The job is
submitted the way docs/deploy.md tells users to: the repository as working
dir, uploaded minus .rayignore, with `python jobs/train_aide.py key=value ...`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PORTS = {"--port": 6390, "--dashboard-port": 8290, "--client-port": 23090, "--dashboard-agent-port": 52390}
JOBS_API = f"http://127.0.0.1:{PORTS['--dashboard-port']}"
TRAIN_SCRIPT = REPO / "jobs" / "train_aide.py"

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(extra)
    return env


def _run(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _aide_ray(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "aide_ray.cli.main", *args], timeout=timeout)


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr_hex))))
    return found


@pytest.fixture(scope="module")
def local_head():
    # Short path on purpose: Ray's Unix socket paths under the temp dir must stay < 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="ar-e2e-", dir="/tmp"))
    ray_tmp = str(tmp / "ray")
    port_args = [str(x) for kv in PORTS.items() for x in kv]
    try:
        up = _aide_ray("cluster", "up", *port_args, "--num-cpus", "4", "--temp-dir", ray_tmp, timeout=240)
        assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
        yield {"tmp": tmp, "up": up}
    finally:
        _aide_ray("cluster", "down", "--port", str(PORTS["--port"]), "--temp-dir", ray_tmp, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(entrypoint: list[str], *, submission_id: str, timeout: float,
            env: dict[str, str] | None = None, runtime_env: dict | None = None) -> subprocess.CompletedProcess:
    args = [_ray(), "job", "submit", "--address", JOBS_API, "--submission-id", submission_id,
            "--working-dir", "."]
    if runtime_env:
        args += ["--runtime-env-json", json.dumps(runtime_env)]
    return _run(args + ["--", *entrypoint], timeout=timeout, env=env)


def test_up_prints_the_submit_line_and_binds_the_jobs_api_to_loopback(local_head):
    out = local_head["up"].stdout
    assert f"RAY_ADDRESS={JOBS_API} ray job submit --working-dir . -- python jobs/train_aide.py" in out
    assert _listening_addresses(PORTS["--dashboard-port"]) == {"127.0.0.1"}
    for _ in range(30):  # `ray status` reports nothing until the autoscaler's first update (seconds)
        status = _aide_ray("cluster", "status", "--port", str(PORTS["--port"]),
                           "--temp-dir", str(local_head["tmp"] / "ray"), timeout=60)
        if "4.0 CPU" in status.stdout:
            break
        time.sleep(2)
    assert status.returncode == 0, status.stderr
    assert "(running)" in status.stdout and "4.0 CPU" in status.stdout, status.stdout


def test_working_dir_upload_leaves_out_rayignore_paths(local_head):
    """With Ray's own excludes and .gitignore switched off, .rayignore alone keeps .venv and .git out."""
    listing = "import json, os; print('LISTING', json.dumps(sorted(os.listdir('.'))))"
    env = _env(RAY_RUNTIME_ENV_IGNORE_GITIGNORE="1", RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES="")
    done = _submit(["python", "-c", listing], submission_id=f"aide-ls-{uuid.uuid4().hex[:8]}", timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("LISTING "))
    uploaded = set(json.loads(line[len("LISTING "):]))
    assert {"aide_ray", "jobs", "pyproject.toml"} <= uploaded
    assert uploaded.isdisjoint({".venv", ".git", "runs", "outputs", "data_cache", "demo_data"}), uploaded


@pytest.mark.timeout(900)
def test_train_job_runs_to_success_and_writes_its_run_folder(local_head):
    if not TRAIN_SCRIPT.is_file():
        pytest.fail(f"{TRAIN_SCRIPT} does not exist (the training entry point is needed for this test)")
    tmp: Path = local_head["tmp"]
    demo, shards, runs = tmp / "demo", tmp / "shards", tmp / "runs"
    made = _aide_ray("demo-data", str(demo), "--cases", "4", "--slices", "4", "--size", "32")
    assert made.returncode == 0, made.stderr
    ingested = _aide_ray("ingest", str(demo / "manifest.csv"), "--out", str(shards), "--size", "32")
    assert ingested.returncode == 0, ingested.stderr

    submission_id = f"aide-e2e-{uuid.uuid4().hex[:8]}"
    done = _submit(
        ["python", "jobs/train_aide.py", "epochs=2", "workers=1", "batch_size=2", "cpus_per_worker=1",
         f"data.shards={shards}", f"data.demo_dir={tmp / 'demo_cache'}", "model.base_width=4",
         f"run.storage_path={runs}", "run.name=e2e"],
        submission_id=submission_id, timeout=720,
        runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1",
                                  "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    assert done.returncode == 0, f"job failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(JOBS_API).get_job_status(submission_id) == JobStatus.SUCCEEDED
    assert "Run folder:" in done.stdout  # the driver's log was streamed back by `ray job submit`
    # A quiet console: each epoch's line once, no raw report dicts, no Ray Data execution chatter.
    for epoch in (1, 2):
        assert done.stdout.count(f"[aide_ray] epoch {epoch}/2:") == 1, done.stdout[-4000:]
    for noise in ("TrainingReport(", "Starting execution of Dataset", "Execution plan of Dataset"):
        assert noise not in done.stdout, noise

    run_dir = runs / "e2e"
    assert (run_dir / "metrics.csv").is_file(), sorted(p.name for p in run_dir.iterdir())
    assert [p for p in run_dir.glob("checkpoint_*") if p.is_dir()], sorted(p.name for p in run_dir.iterdir())


def test_token_auth_head_rejects_requests_without_the_token():
    """`up --auth token`: the Jobs API answers 401 without the token and 200 with it."""
    import secrets
    import urllib.error
    import urllib.request

    tmp = Path(tempfile.mkdtemp(prefix="ar-tok-", dir="/tmp"))
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    # Ports of its own, next to the module head's, so both tests can share a machine.
    ports = ["--port", "6391", "--dashboard-port", "8291", "--client-port", "23091",
             "--dashboard-agent-port", "52391", "--temp-dir", str(tmp / "ray")]
    env = _env(RAY_AUTH_TOKEN_PATH=str(token_file))  # never ~/.ray/auth_token
    cli = [sys.executable, "-m", "aide_ray.cli.main", "cluster"]
    try:
        up = _run(cli + ["up", "--auth", "token", "--num-cpus", "1", *ports], timeout=240, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "RAY_AUTH_MODE=token" in up.stdout and token_file.read_text() not in up.stdout
        url = "http://127.0.0.1:8291/api/jobs/"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url, timeout=10)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token_file.read_text()}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        _run(cli + ["down", "--port", "6391", "--temp-dir", str(tmp / "ray")], timeout=120, env=env)
        shutil.rmtree(tmp, ignore_errors=True)
