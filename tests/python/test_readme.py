"""README.md's Python snippets, run against the gateway on its embedded default.

The Rust test `crates/sluice/tests/readme.rs` runs every shell command of the README; this
runs the `python` blocks with the SDK the suite installs, pointed at a gateway on a free port.
"""

import contextlib
import io
import pathlib
import re

from sluice_process import Process

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks():
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_every_python_snippet_runs_against_the_embedded_default():
    blocks = python_blocks()
    assert blocks, "README has no python block"
    gateway = Process(["serve", "--listen", "127.0.0.1:0"])
    try:
        for code in blocks:
            assert "http://127.0.0.1:8080" in code
            code = code.replace("http://127.0.0.1:8080", gateway.url)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, str(README), "exec"), {})
            out = printed.getvalue()
            # The unary answer with its usage, then the streamed text.
            assert "CompletionUsage(" in out, out
            assert len(out.strip().splitlines()) >= 2, out
    finally:
        gateway.stop()
