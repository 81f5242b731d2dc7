#!/usr/bin/env python3
"""Replay overhead, side by side in one run: the same open-loop load, driven by `sluice load`,
straight to a zero-timing `sluice mock` and to `sluice proxy --mode replay` answering from
recordings of that mock. Reports per rate the latency strict replay adds over the direct call
(p50, p99) and the added p99 against the 1 ms target.

The load is a fixed file workload (`--dataset`, cycled in order), recorded once through the
proxy in `replay-or-record` mode, so every replayed request has a recording; the replaying
proxy's upstream is a port nothing listens on, and the run fails if any request missed (a
miss is a 502 and a `replay miss` log line; both are counted).

Every (rate, target) cell is measured `--repeats` times, targets interleaved in alternating
order; "added" is the median of the per-repeat differences to direct.

Usage: bench/replay-overhead.sh [--rates 500,1000,2000] [--duration 5] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from overhead import free_port, start, stop_all, wait_port

TARGET_MS = 1.0
DISTINCT_REQUESTS = 16
WORDS = "river stone cloud maple harbor lantern meadow copper violet thunder".split()


def dataset_lines():
    """Fixed chat bodies: 32 words each, different per line, the same in every run."""
    lines = []
    for i in range(DISTINCT_REQUESTS):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(32)]
        body = {"messages": [{"role": "user", "content": f"request {i}: " + " ".join(words)}], "max_tokens": 16}
        lines.append(json.dumps(body))
    return lines


def run_load(sluice, url, dataset, rate, duration, out):
    cmd = [
        sluice, "load", "--url", url, "--model", "m", "--dataset", str(dataset), "--no-stream",
        "--rate", str(rate), "--duration", f"{duration}s", "--warmup", "1s", "--timeout", "10s",
        "--max-error-rate", "1", "--json", str(out),
    ]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    s = json.loads(out.read_text())["runs"][0]["summary"]
    e2e = s["latency"]["e2e"] or {}
    return {
        "p50": e2e.get("p50_ms", float("nan")),
        "p99": e2e.get("p99_ms", float("nan")),
        "requests": s["requests"]["total"],
        "failed": s["requests"]["failed"],
        "achieved": s["throughput"]["requests_per_s"],
        "generator_bottleneck": s["generator"].get("likely_bottleneck"),
    }


def record(sluice, mock_url, dataset, rec_dir, work):
    """One pass over the dataset through a recording proxy: one entry per distinct request."""
    port = free_port()
    proxy = start([sluice, "proxy", "--mode", "replay-or-record", "--dir", str(rec_dir),
                   "--upstream", mock_url, "--listen", f"127.0.0.1:{port}"])
    try:
        wait_port(port)
        subprocess.run(
            [sluice, "load", "--url", f"http://127.0.0.1:{port}/v1", "--model", "m",
             "--dataset", str(dataset), "--no-stream", "--concurrency", "1",
             "--requests", str(DISTINCT_REQUESTS), "--json", str(work / "record.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(15)
    recorded = sorted(rec_dir.glob("*.json"))
    if len(recorded) != DISTINCT_REQUESTS:
        raise RuntimeError(f"expected {DISTINCT_REQUESTS} recordings, found {len(recorded)} in {rec_dir}")


def misses_logged(log):
    return log.read_text(errors="replace").count("replay miss")


def check_miss_detection(url, log):
    """An unrecorded request must be a 502 and be counted, or a zero miss count means nothing."""
    before = misses_logged(log)
    req = urllib.request.Request(
        url + "/chat/completions", method="POST", headers={"content-type": "application/json"},
        data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "not recorded"}]}).encode(),
    )
    try:
        urllib.request.urlopen(req, timeout=10)
        raise RuntimeError("an unrecorded request was answered")
    except urllib.error.HTTPError as e:
        if e.code != 502:
            raise RuntimeError(f"an unrecorded request got {e.code}, not the 502 replay_miss") from e
    time.sleep(0.2)
    if misses_logged(log) != before + 1:
        raise RuntimeError("the proxy log does not count replay misses; the miss check is blind")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rates", default="500,1000,2000")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sluice-replay-overhead-"))
    dataset = work / "requests.jsonl"
    dataset.write_text("\n".join(dataset_lines()) + "\n")
    rec_dir = work / "recordings"
    proxy_log = work / "proxy.log"
    procs = []
    try:
        mock_port = free_port()
        procs.append(start([args.sluice, "mock", "--listen", f"127.0.0.1:{mock_port}", "--zero-timing"]))
        wait_port(mock_port)
        record(args.sluice, f"http://127.0.0.1:{mock_port}", dataset, rec_dir, work)

        proxy_port, dead_port = free_port(), free_port()
        with proxy_log.open("w") as log:
            replayer = subprocess.Popen(
                [args.sluice, "proxy", "--mode", "replay", "--dir", str(rec_dir),
                 "--upstream", f"http://127.0.0.1:{dead_port}", "--listen", f"127.0.0.1:{proxy_port}"],
                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"},
            )
        procs.append(replayer)
        wait_port(proxy_port)
        targets = {
            "direct": f"http://127.0.0.1:{mock_port}/v1",
            "replay": f"http://127.0.0.1:{proxy_port}/v1",
        }
        names = list(targets)
        cells = {}
        for rep in range(args.repeats):
            for rate in rates:
                order = names if rep % 2 == 0 else names[::-1]
                for name in order:
                    r = run_load(args.sluice, targets[name], dataset, rate, args.duration, work / "r.json")
                    cells.setdefault((rate, name), []).append(r)
                    print(f"rep {rep + 1} rate {rate:>5} {name:>6}: p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                          f"  failed {r['failed']}/{r['requests']}  achieved {r['achieved']:.0f}/s", flush=True)
        misses = misses_logged(proxy_log)
        check_miss_detection(targets["replay"], proxy_log)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)

    replay_failed = sum(c["failed"] for (_, n), cs in cells.items() if n == "replay" for c in cs)
    if misses or replay_failed:
        print(f"FAILED: {misses} replay misses, {replay_failed} failed replayed requests", file=sys.stderr)
        return 1

    def med(rate, name, key):
        return statistics.median(c[key] for c in cells[(rate, name)])

    def added(rate, key):
        diffs = [p[key] - d[key] for p, d in zip(cells[(rate, "replay")], cells[(rate, "direct")])]
        return statistics.median(diffs)

    lines = [
        "| rate (req/s) | direct p50 / p99 (ms) | replay p50 / p99 (ms) | added p50 / p99 (ms) | added p99 ÷ 1 ms target | replayed requests, misses |",
        "|---|---|---|---|---|---|",
    ]
    for rate in rates:
        n = sum(c["requests"] for c in cells[(rate, "replay")])
        lines.append(
            f"| {rate} | {med(rate, 'direct', 'p50'):.3f} / {med(rate, 'direct', 'p99'):.3f} "
            f"| {med(rate, 'replay', 'p50'):.3f} / {med(rate, 'replay', 'p99'):.3f} "
            f"| {added(rate, 'p50'):+.3f} / {added(rate, 'p99'):+.3f} "
            f"| {added(rate, 'p99') / TARGET_MS:.2f} | {n}, 0 |"
        )
    raw_lines = ["", "Raw p99 (ms) per repeat:", "", "| rate | direct | replay |", "|---|---|---|"]
    for rate in rates:
        raw_lines.append(f"| {rate} | " + " | ".join(
            ", ".join(f"{c['p99']:.2f}" for c in cells[(rate, n)]) for n in names) + " |")
    gen_flags = sorted({r for (r, _), cs in cells.items() if any(c["generator_bottleneck"] for c in cs)})
    if gen_flags:
        raw_lines.append(f"\nThe load generator flagged itself as a possible bottleneck at rates {gen_flags}.")
    table = "\n".join(lines + raw_lines)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"replay-overhead-{stamp}.md").write_text(table + "\n")
    raw = {f"{rate}/{name}": cs for (rate, name), cs in cells.items()}
    (out / f"replay-overhead-{stamp}.json").write_text(json.dumps({"cells": raw}, indent=1))
    print(f"\nwritten to {out}/replay-overhead-{stamp}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
