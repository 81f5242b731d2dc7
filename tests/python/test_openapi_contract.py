"""The gateway's answers against its own OpenAPI document, by schemathesis.

A gateway with `auth.mode = "keys"`, the cache on and limits set, in a temp data directory,
a global admin key made with `sluice keys`, and schemathesis generating requests for every documented operation from
`/openapi.json` (deterministically, bounded in examples and time). The checks: no 5xx, every
status documented, every body and content type as documented.
"""

import os
import subprocess
import sys
import tempfile

from sluice_process import BIN, Process

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_every_answer_matches_the_contract():
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "sluice.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp}/data"\n'
                '[auth]\nmode = "keys"\n'
                '[models."gpt-4o-mini"]\n[[models."gpt-4o-mini".endpoints]]\nurl = "embedded-mock://engine"\n'
                '[models."gpt-4o-mini".cache]\nmode = "on"\n'
                '[models."gpt-4o-mini".limits]\nrequests_per_minute = 1000000\n'
                'tokens_per_minute = 100000000\nestimated_tokens = 1000\n'
            )
        made = subprocess.run(
            [BIN, "keys", "--config", config, "create", "--tenant", "*", "--name", "contract",
             "--scopes", "chat:write,models:read,admin"],
            capture_output=True, text=True, check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        gateway = Process(["serve", "--config", config])
        try:
            schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
            run = subprocess.run(
                [schemathesis, "run", f"{gateway.url}/openapi.json",
                 "--checks", CHECKS, "--max-examples", "25", "--generation-deterministic",
                 "--request-timeout", "20", "-H", f"Authorization: Bearer {key}"],
                capture_output=True, text=True, timeout=600, cwd=tmp,
                env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
            )
            summary = run.stdout[-4000:]
            assert run.returncode == 0, summary + run.stderr[-2000:]
            assert "passed" in summary and "failed" not in summary.split("SUMMARY")[-1], summary
        finally:
            gateway.stop()
