"""Starting `sluice` subprocesses for the pytest suites and stopping them again."""

import os
import re
import subprocess
import threading

BIN = os.environ.get("SLUICE_BIN", "target/debug/sluice")
URL_RE = re.compile(r"http://127\.0\.0\.1:\d+")


class Process:
    """A sluice subprocess whose first printed URL is its address."""

    def __init__(self, args):
        self.proc = subprocess.Popen(
            [BIN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stdout:
                m = URL_RE.search(line)
                if m and self.url is None:
                    self.url = m.group(0)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError(f"{args} printed no URL")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
