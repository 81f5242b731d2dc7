#!/usr/bin/env python3
"""Rate limits across a fleet, seen from the provider's side (see docs/limits.md).

A strict provider (`sluice mock --tokens-per-minute P`), Redis, and three `sluice serve`
processes sharing it, each with the model's `tokens_per_minute` at `--gateway-share` of
the provider's (95 % by default). `sluice load` drives more than the limit allows, open
loop, spread over the three (`--url-weights`): an even run, and a skewed run (80 % to one
instance) in which one of the others is killed midway. Every second the provider's own
counters are read (`/admin/stats`), and Redis's (`INFO commandstats`).

Reported per run, against the issue's targets:
- the most tokens the provider admitted in any rolling 60 s, over its TPM (≤ 1.05 × the
  gateway's limit);
- provider 429s (target 0);
- requests in flight at the provider, the most seen at a sample (≤ max_concurrent);
- utilisation: tokens admitted from the second minute on over what the gateway's limit
  allows in that time (≥ 90 % even, ≥ 80 % skewed);
- Redis commands per admitted request (≤ 0.2).

Two scenarios (`--scenario`), each overridable flag by flag:
- `steady` (default): 60 000 TPM, 6 requests a second offered, at most 12 in flight — the
  limits bind at a few requests a second, where the fleet's coordination (a heartbeat per
  instance per second, whatever the traffic) costs the most per request;
- `busy`: 3 000 000 TPM (a hosted provider's higher tiers), 300 requests a second offered, a
  fast provider: what Redis costs per request at the rates where it matters.

Redis's commands are counted from `INFO commandstats`, less the sampler's own `INFO`s, with
the `EVALSHA`s (one per heartbeat) apart; commands a script runs count too.

Usage: bench/limits-fleet.sh [--scenario steady|busy] [--minutes 3] [--provider-tpm N] [--rate R]
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
import threading
import time
import urllib.request
from pathlib import Path

from cache import redis_calls

SCENARIOS = {
    "steady": {"provider_tpm": 60_000, "rate": 6, "max_concurrent": 12, "decode_interval": "10ms"},
    "busy": {"provider_tpm": 3_000_000, "rate": 300, "max_concurrent": 200, "decode_interval": "2ms"},
}
from overhead import free_port, start, stop_all, wait_port


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=5) as r:
        return json.loads(r.read())


class Fleet:
    def __init__(self, sluice, work, args):
        self.procs = []
        self.redis_port, self.mock_port = free_port(), free_port()
        (work / "redis").mkdir()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work / "redis")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.redis)
        self.procs.append(start([
            sluice, "mock", "--listen", f"127.0.0.1:{self.mock_port}",
            "--tokens-per-minute", str(args.provider_tpm),
            "--max-concurrent", str(args.max_concurrent + 8),
            "--min-output-tokens", "100", "--max-output-tokens", "100",
            "--decode-interval", args.decode_interval, "--batch-slowdown", "0",
        ]))
        wait_port(self.redis_port)
        wait_port(self.mock_port)
        self.gateway_tpm = int(args.provider_tpm * args.gateway_share)
        self.gateways, self.ports = [], []
        for i in range(3):
            port = free_port()
            config = work / f"gw{i}.toml"
            config.write_text(
                f'[server]\nlisten = "127.0.0.1:{port}"\naccess_log = false\nworkers = 1\n'
                f'data_dir = "{work}/data{i}"\n'
                f'[state]\nredis_url = "redis://127.0.0.1:{self.redis_port}/0"\n'
                '[limits]\nheartbeat = "1s"\ninstance_timeout = "5s"\n'
                f'[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:{self.mock_port}/v1"\n'
                f'[models.m.limits]\ntokens_per_minute = {self.gateway_tpm}\n'
                f'max_concurrent = {args.max_concurrent}\nestimated_tokens = 300\n'
            )
            proc = start([sluice, "serve", "--config", str(config)])
            self.procs.append(proc)
            self.gateways.append(proc)
            self.ports.append(port)
        for port in self.ports:
            wait_port(port)
        time.sleep(3)  # heartbeats: the three find each other


def redis_counts(port):
    calls = redis_calls(port)
    return {"redis": sum(n for name, n in calls.items() if name != "info"),
            "evalsha": calls.get("evalsha", 0)}


def sample(fleet, stop, out):
    """Reads the provider's counters and Redis's every second until `stop` is set."""
    while not stop.is_set():
        try:
            s = stats(fleet.mock_port)
            out.append({"t": time.time(), "admitted_tokens": s["admitted_tokens_total"],
                        "admitted": s["admitted_total"], "limited": s["rate_limited_total"],
                        "active": s["active"],
                        **redis_counts(fleet.redis_port)})
        except OSError:
            pass
        stop.wait(1.0)


def run(sluice, work, args, name, weights, kill_at=None):
    fleet = Fleet(sluice, work / name, args)
    samples, stop = [], threading.Event()
    thread = threading.Thread(target=sample, args=(fleet, stop, samples), daemon=True)
    try:
        thread.start()
        seconds = int(args.minutes * 60)
        load = subprocess.Popen(
            [sluice, "load", *sum((["--url", f"http://127.0.0.1:{p}/v1"] for p in fleet.ports), []),
             "--url-weights", ",".join(map(str, weights)), "--model", "m",
             "--rate", str(args.rate), "--duration", f"{seconds}s", "--input-tokens", "200",
             "--output-tokens", "100", "--timeout", "30s", "--max-error-rate", "1",
             "--seed", str(int(time.time())), "--json", str(work / f"{name}.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill_at is not None:
            time.sleep(kill_at)
            fleet.gateways[2].send_signal(signal.SIGKILL)
            print(f"{name}: killed instance 3 at {kill_at} s", flush=True)
        load.wait(timeout=seconds + 120)
        time.sleep(2)
    finally:
        stop.set()
        thread.join(5)
        stop_all(fleet.procs)
    return summarise(name, samples, fleet.gateway_tpm, args)


def summarise(name, samples, gateway_tpm, args):
    start_t = samples[0]["t"]
    worst_minute = 0
    for i, s in enumerate(samples):
        # The most admitted in any 60 s: against each earlier sample at most 60 s before.
        for earlier in samples[: i + 1]:
            if s["t"] - earlier["t"] <= 60.5:
                worst_minute = max(worst_minute, s["admitted_tokens"] - earlier["admitted_tokens"])
                break
    after_first = [s for s in samples if s["t"] - start_t >= 60]
    span = after_first[-1]["t"] - after_first[0]["t"] if len(after_first) > 1 else 0
    used = after_first[-1]["admitted_tokens"] - after_first[0]["admitted_tokens"] if span else 0
    utilisation = used / (gateway_tpm * span / 60) if span else float("nan")
    admitted = samples[-1]["admitted"] - samples[0]["admitted"]
    redis = samples[-1]["redis"] - samples[0]["redis"]
    heartbeats = samples[-1]["evalsha"] - samples[0]["evalsha"]
    result = {
        "run": name,
        "worst_60s_tokens": worst_minute,
        "worst_60s_over_limit": worst_minute / gateway_tpm,
        "provider_429": samples[-1]["limited"] - samples[0]["limited"],
        "max_in_flight": max(s["active"] for s in samples),
        "utilisation": utilisation,
        "admitted_requests": admitted,
        "admitted_per_second": admitted / (samples[-1]["t"] - samples[0]["t"]),
        "redis_commands_per_request": redis / admitted if admitted else float("nan"),
        "redis_commands_per_heartbeat": redis / heartbeats if heartbeats else float("nan"),
        "samples": len(samples),
    }
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--provider-tpm", type=int)
    ap.add_argument("--gateway-share", type=float, default=0.95)
    ap.add_argument("--max-concurrent", type=int)
    ap.add_argument("--rate", type=float, help="requests per second, all instances")
    ap.add_argument("--decode-interval", help="the provider's time per output token")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    for name, value in SCENARIOS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="sluice-limits-fleet-"))
    results = []
    try:
        for name in ("even", "skewed"):
            (work / name).mkdir()
        results.append(run(args.sluice, work, args, "even", [1, 1, 1]))
        results.append(run(args.sluice, work, args, "skewed", [8, 1, 1],
                           kill_at=int(args.minutes * 30)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| run | worst rolling 60 s ÷ limit (≤ 1.05) | provider 429s (0) | most in flight "
             f"(≤ {args.max_concurrent}) | utilisation after the first minute | admitted per second "
             "| Redis commands per request (≤ 0.2) | Redis commands per heartbeat |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['worst_60s_over_limit']:.3f} | {r['provider_429']} | {r['max_in_flight']} "
                     f"| {100 * r['utilisation']:.1f} % | {r['admitted_per_second']:.1f} "
                     f"| {r['redis_commands_per_request']:.3f} | {r['redis_commands_per_heartbeat']:.2f} |")
    table = "\n".join(lines)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"limits-fleet-{args.scenario}-{stamp}.md").write_text(table + "\n")
    (out / f"limits-fleet-{args.scenario}-{stamp}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\nwritten to {out}/limits-fleet-{args.scenario}-{stamp}.md")


if __name__ == "__main__":
    sys.exit(main())
