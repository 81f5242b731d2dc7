"""The example GitHub Actions workflows in examples/ci/ parse and keep the recipe's promises:
pull requests replay with no provider key, the nightly job runs live and reports drift, the
manual job re-records and opens a pull request.

The nightly job is also run for real: its own `run:` steps, in order, with bash, against a
`sluice mock` standing in for the provider. Recorded from a mock of one seed, the job must
fail on drift against a mock of another seed, and pass against the same seed."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sluice_process import BIN, Process

CI = Path(__file__).resolve().parents[2] / "examples/ci"


def workflow(name):
    doc = yaml.safe_load((CI / name).read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    doc["on"] = doc.pop(True)
    return doc


def runs(doc):
    return "\n".join(s.get("run", "") for job in doc["jobs"].values() for s in job["steps"])


def uses(doc):
    return [s["uses"].split("@")[0] for job in doc["jobs"].values() for s in job["steps"] if "uses" in s]


@pytest.mark.parametrize("name", ["pull-request.yml", "nightly-drift.yml", "rerecord.yml"])
def test_every_step_runs_or_uses_something(name):
    doc = workflow(name)
    for job in doc["jobs"].values():
        assert job["runs-on"] and job["timeout-minutes"]
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), step


def test_pull_requests_replay_offline_without_a_key():
    doc = workflow("pull-request.yml")
    assert "pull_request" in doc["on"]
    text = (CI / "pull-request.yml").read_text()
    assert "secrets." not in text
    assert "--mode replay " in runs(doc)
    assert "replay miss" in runs(doc) and "exit 1" in runs(doc)


def test_nightly_runs_live_and_reports_drift():
    doc = workflow("nightly-drift.yml")
    assert doc["on"]["schedule"][0]["cron"]
    r = runs(doc)
    # diff mode calls the provider for every request and compares; read-old-write-new would
    # serve every committed recording from disk and could never see drift.
    assert "--mode diff" in r and "--secret-env OPENAI_API_KEY" in r
    assert "read-old-write-new" not in (CI / "nightly-drift.yml").read_text()
    assert "sluice proxy report --dir \"$RECORDINGS\" --since-start" in r
    upload = next(s for j in doc["jobs"].values() for s in j["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "/.sluice/" in upload["with"]["path"] and upload["if"] == "always()"
    assert any("drifted" in s.get("if", "") for j in doc["jobs"].values() for s in j["steps"])


def test_rerecord_is_manual_and_opens_a_pull_request():
    doc = workflow("rerecord.yml")
    assert list(doc["on"]) == ["workflow_dispatch"]
    assert "--mode record" in runs(doc)
    assert "peter-evans/create-pull-request" in uses(doc)
    assert doc["permissions"]["pull-requests"] == "write"


# What the suite under test sends: a unary and a streamed chat completion, through the
# official SDK, with the base URL from the environment as the recipe asks of a suite.
SUITE = """
import openai
client = openai.OpenAI()
messages = [{"role": "user", "content": "Name three rivers of Europe."}]
client.chat.completions.create(model="mock", messages=messages, max_tokens=8, seed=1)
for _ in client.chat.completions.create(model="mock", messages=messages, max_tokens=8, seed=1, stream=True):
    pass
"""

FAKE_KEY = "sk-nightly-test-0123456789abcdefghij"


def expand(text, env, outputs):
    """The workflow expressions the nightly job uses: env, secrets and step outputs."""
    def value(m):
        expr = m.group(1).strip()
        if expr.startswith("env."):
            return env[expr[4:]]
        if expr.startswith("secrets."):
            return FAKE_KEY
        if expr.startswith("steps.report.outputs."):
            return outputs.get(expr.rsplit(".", 1)[1], "")
        if expr.startswith("github.run_id"):
            return "1"
        raise AssertionError(f"unexpected expression {expr}")
    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def condition_holds(cond, env, outputs):
    """`if:` conditions of the form `steps.report.outputs.NAME != '0'`."""
    m = re.fullmatch(r"steps\.report\.outputs\.(\w+) != '0'", cond.strip())
    assert m, f"unexpected condition {cond}"
    return outputs.get(m.group(1), "") != "0"


def run_nightly(workspace, provider_url):
    """Runs the nightly job's `run:` steps in `workspace` and returns
    (step outputs, the failing step's name or None, the proxy's log)."""
    doc = workflow("nightly-drift.yml")
    job = doc["jobs"]["drift"]
    port = free_port()
    env = {
        **os.environ,
        **{k: str(v) for k, v in doc["env"].items()},
        "PROVIDER_URL": provider_url,
        "PROXY_ADDR": f"127.0.0.1:{port}",
        "TEST_COMMAND": f"{sys.executable} suite.py",
        "GITHUB_OUTPUT": str(workspace / "github_output"),
        "GITHUB_STEP_SUMMARY": str(workspace / "github_summary"),
        "GITHUB_PATH": str(workspace / "github_path"),
        # The job builds sluice and puts it on PATH; the test uses the binary under test.
        "PATH": f"{Path(BIN).resolve().parent}:{os.environ['PATH']}",
        "RUST_LOG": "info",
    }
    outputs, failed = {}, None
    try:
        for step in job["steps"]:
            if "run" not in step or step["name"] == "Build sluice":
                continue
            if "if" in step and not condition_holds(step["if"], env, outputs):
                continue
            step_env = {**env, **{k: expand(str(v), env, outputs) for k, v in step.get("env", {}).items()}}
            script = expand(step["run"], env, outputs)
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                cwd=workspace, env=step_env, capture_output=True, text=True, timeout=120,
            )
            out = workspace / "github_output"
            if out.exists():
                outputs = dict(l.split("=", 1) for l in out.read_text().split("\n") if "=" in l)
            if done.returncode != 0 and not step.get("continue-on-error"):
                failed = step["name"]
                break
    finally:
        pid_file = workspace / "proxy.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
    log = (workspace / "proxy.log").read_text() if (workspace / "proxy.log").exists() else ""
    return outputs, failed, log


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mock(seed):
    return Process(["mock", "--zero-timing", "--seed", str(seed), "--listen", "127.0.0.1:0"])


@pytest.fixture
def recorded_workspace(tmp_path):
    """A service checkout whose suite was recorded from a mock of seed 1."""
    (tmp_path / "suite.py").write_text(SUITE)
    recordings = tmp_path / "tests/recordings"
    provider = mock(1)
    try:
        proxy = Process(["proxy", "--mode", "record", "--dir", str(recordings),
                         "--upstream", provider.url, "--listen", "127.0.0.1:0"])
        try:
            subprocess.run([sys.executable, "suite.py"], cwd=tmp_path, check=True, timeout=60,
                           env={**os.environ, "OPENAI_BASE_URL": proxy.url + "/v1", "OPENAI_API_KEY": FAKE_KEY})
        finally:
            proxy.stop()
    finally:
        provider.stop()
    assert len(list(recordings.glob("*.json"))) == 2
    shutil.rmtree(recordings / ".sluice")
    return tmp_path


def snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.glob("*.json")}


def test_the_nightly_job_fails_when_the_provider_changed_its_answers(recorded_workspace):
    recordings = recorded_workspace / "tests/recordings"
    before = snapshot(recordings)
    provider = mock(2)  # reseeded: the same requests get other answers
    try:
        outputs, failed, log = run_nightly(recorded_workspace, provider.url)
    finally:
        provider.stop()
    assert outputs.get("drifted") == "2", (outputs, log)
    assert failed == "Fail on drift", (failed, log)
    report = (recorded_workspace / "drift-report.txt").read_text()
    assert "drifted 2" in report and "text" in report, report
    # diff mode compares; it never rewrites what was committed.
    assert snapshot(recordings) == before


def test_the_nightly_job_passes_when_nothing_changed(recorded_workspace):
    provider = mock(1)
    try:
        outputs, failed, log = run_nightly(recorded_workspace, provider.url)
    finally:
        provider.stop()
    assert outputs.get("drifted") == "0", (outputs, log)
    assert outputs.get("unused") == "0", outputs
    assert failed is None, (failed, log)
