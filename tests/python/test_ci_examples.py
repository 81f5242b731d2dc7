"""The example GitHub Actions workflows in examples/ci/ parse and keep the recipe's promises:
pull requests replay with no provider key, the nightly job runs live and reports drift, the
manual job re-records and opens a pull request."""

from pathlib import Path

import pytest
import yaml

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
    assert "--mode read-old-write-new" in r and "--secret-env OPENAI_API_KEY" in r
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
