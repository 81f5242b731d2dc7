#!/usr/bin/env python3
"""CPU per proxied request, user and kernel time apart: nginx and `sluice serve` in front of
the same zero-timing `sluice mock`, the same open-loop load, alternating, several repeats.

CPU time per request does not depend on how busy the rest of the machine is (much), so this
is the number to watch while making the hot path cheaper; bench/overhead.sh then shows what
it does to latency and to the highest sustained rate.

Usage: bench/cpu-per-request.sh [--rate 5000] [--duration 6] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overhead import ProxyStack, stop_all  # noqa: E402


def tree_pids(pid):
    """`pid` and its children (nginx's workers are children of the master)."""
    pids = [pid]
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(p.name))
    return pids


def cpu_split(pids):
    """(user, system) seconds summed over `pids`, threads included."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / ticks, system / ticks


def mock_completed(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=5) as r:
        return json.load(r)["completed"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sluice-cpu-"))
    procs = []
    results = {"nginx": [], "sluice": []}
    try:
        stack = ProxyStack(args.sluice, work)
        procs = stack.procs
        mock_port = stack.mock_port
        targets = {
            "nginx": (stack.nginx_port, lambda: tree_pids(stack.nginx.pid)),
            "sluice": (stack.gw_port, lambda: [stack.gateway.pid]),
        }
        for rep in range(args.repeats):
            order = ["nginx", "sluice"] if rep % 2 == 0 else ["sluice", "nginx"]
            for name in order:
                port, pids = targets[name]
                served_before = mock_completed(mock_port)
                u0, s0 = cpu_split(pids())
                subprocess.run(
                    [args.sluice, "load", "--url", f"http://127.0.0.1:{port}/v1", "--model", "m",
                     "--rate", str(args.rate), "--duration", f"{args.duration}s", "--no-stream",
                     "--input-tokens", "32", "--output-tokens", "16", "--timeout", "10s",
                     "--max-error-rate", "1", "--json", str(work / "r.json")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                )
                u1, s1 = cpu_split(pids())
                served = mock_completed(mock_port) - served_before
                user_us = 1e6 * (u1 - u0) / max(served, 1)
                sys_us = 1e6 * (s1 - s0) / max(served, 1)
                results[name].append((user_us, sys_us))
                print(f"rep {rep + 1} {name:>6}: {served} requests, user {user_us:.1f} µs + "
                      f"kernel {sys_us:.1f} µs = {user_us + sys_us:.1f} µs per request", flush=True)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedians over {args.repeats} repeats at {args.rate} req/s (µs of CPU per request):")
    print("| proxy | user | kernel | total |")
    print("|---|---|---|---|")
    medians = {}
    for name, rows in results.items():
        u = statistics.median(r[0] for r in rows)
        s = statistics.median(r[1] for r in rows)
        t = statistics.median(r[0] + r[1] for r in rows)
        medians[name] = t
        print(f"| {name} | {u:.1f} | {s:.1f} | {t:.1f} |")
    print(f"\nsluice ÷ nginx, total CPU per request: {medians['sluice'] / medians['nginx']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
