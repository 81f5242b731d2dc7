#!/usr/bin/env python3
"""The inference cache's numbers, side by side in one run (see docs/benchmarks.md).

Part 1, cost of a hit (unary answers, a zero-timing `sluice mock`): the same load goes

- `direct`: straight to the mock;
- `pass`: through `sluice serve` to the mock, model without a cache (the gateway's own
  overhead on a miss);
- `hit`: through the same gateway to a model with the embedded cache, every request one of
  a few prompts already stored (warm in memory);
- `hit-redis`: through a second gateway whose cache is a Redis server started here.

Each target gets a closed-loop run (`--concurrency`, the throughput it sustains) and
open-loop runs at `--rates` (latency from each request's scheduled send time), targets in
rotating order, `--repeats` times; the medians of the repeats are reported. Redis round
trips per hit are Redis's own count (`INFO commandstats`) over the gateway's count of hits
(`sluice_cache_lookups_total{outcome="hit"}`) during the `hit-redis` runs.

Part 2, a mixed streaming workload (a mock with its default timing: 20 ms to the first
token plus 20 us per prompt token, 10 ms per output token): `sluice load --repeat-share`
sends a share of repeated prompts (each of `--repeat-shares`) at `--mixed-rate`, once with the cache on and once with
`x-sluice-cache: off`, alternating, each run with a seed of its own: every run starts cold,
in the gateway's cache and in the mock's simulated prefix cache (which, like an engine's,
makes a prompt it has seen before quicker to its first token, cache on or off).
Reported: the hit ratio the gateway counted and TTFT p50/p90 on against off.

Usage: bench/cache.sh [--rates 1000,5000] [--duration 10] [--repeats 3] [--concurrency 32]
                      [--mixed-rate 20] [--mixed-duration 30] [--repeat-shares 0.5,0.8]
                      [--repeat-prompts 50] [--skip-cost] [--skip-mixed]
"""

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from overhead import free_port, start, stop_all, wait_port

PROMPTS_FOR_HITS = 8
TARGETS = ["direct", "pass", "hit", "hit-redis"]


def redis_command(port, *args):
    """One command over RESP; returns the reply's bytes (the tests need only INFO and
    FLUSHALL, whose replies are a bulk string or a status)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join([f"*{len(args)}\r\n".encode()]
                           + [f"${len(a)}\r\n{a}\r\n".encode() for a in args]))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"+") and data.endswith(b"\r\n"):
                return data
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]
        return data


def redis_calls(port):
    """Total commands Redis has executed, by `INFO commandstats` (less the INFO itself)."""
    info = redis_command(port, "INFO", "commandstats").decode()
    calls = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", info)}
    return calls


def gateway_counter(port, name, labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def lookups(port):
    """The gateway's cache lookups so far, by outcome."""
    return {o: gateway_counter(port, "sluice_cache_lookups_total", {"outcome": o})
            for o in ("hit", "miss", "bypass")}


class CacheStack:
    """Mock, Redis, and two gateways (embedded cache; Redis cache) on free loopback ports."""

    def __init__(self, sluice, work, mock_timing):
        self.procs = []
        self.mock_port, self.gw_port, self.rgw_port, self.redis_port = (free_port() for _ in range(4))
        timing = ["--zero-timing"] if mock_timing == "zero" else []
        self.procs.append(start([sluice, "mock", "--listen", f"127.0.0.1:{self.mock_port}", *timing]))
        redis_dir = work / "redis"
        redis_dir.mkdir()
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(redis_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.mock_port)
        wait_port(self.redis_port)
        models = (
            f'[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:{self.mock_port}/v1"\n'
            f'[models.c]\n[models.c.cache]\nmode = "on"\n'
            f'[[models.c.endpoints]]\nurl = "http://127.0.0.1:{self.mock_port}/v1"\n'
        )
        (work / "gw.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{self.gw_port}"\naccess_log = false\n'
            f'data_dir = "{work}/data"\n' + models)
        (work / "rgw.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{self.rgw_port}"\naccess_log = false\n'
            f'data_dir = "{work}/rdata"\n[state]\nredis_url = "redis://127.0.0.1:{self.redis_port}/0"\n'
            + models)
        self.gateway = start([sluice, "serve", "--config", str(work / "gw.toml")])
        self.redis_gateway = start([sluice, "serve", "--config", str(work / "rgw.toml")])
        self.procs += [self.gateway, self.redis_gateway]
        wait_port(self.gw_port)
        wait_port(self.rgw_port)


def run_load(sluice, url, model, out, *, rate=None, concurrency=None, duration, stream=False,
             input_tokens=32, output_tokens=16, seed=0, repeat=None, headers=(), warmup="2s"):
    load = ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
    shape = ["--output-tokens", str(output_tokens)] + ([] if stream else ["--no-stream"])
    cmd = [
        sluice, "load", "--url", url, "--model", model, *load, "--duration", f"{duration}s",
        "--warmup", warmup, *shape, "--input-tokens", str(input_tokens), "--timeout", "10s",
        "--max-connections", "512", "--max-error-rate", "1", "--seed", str(seed), "--json", str(out),
    ]
    if repeat:
        cmd += ["--repeat-share", str(repeat[0]), "--repeat-prompts", str(repeat[1])]
    for h in headers:
        cmd += ["--header", h]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    s = json.loads(out.read_text())["runs"][0]["summary"]
    e2e = s["latency"]["e2e"] or {}
    ttft = s["latency"].get("ttft") or {}
    return {
        "p50": e2e.get("p50_ms", float("nan")),
        "p99": e2e.get("p99_ms", float("nan")),
        "ttft_p50": ttft.get("p50_ms"),
        "ttft_p90": ttft.get("p90_ms"),
        "ttft_mean": ttft.get("mean_ms"),
        "requests": s["requests"]["total"],
        "errors": s["requests"]["failed"],
        "achieved": s["throughput"]["requests_per_s"],
        "steal_percent": s["generator"].get("steal_percent"),
    }


def cost_of_a_hit(args, work):
    """Part 1. Returns the cells {target: {"throughput": [...], "rate/R": [...]}} and the
    Redis round trips per hit."""
    stack = CacheStack(args.sluice, work, "zero")
    cells = {t: {} for t in TARGETS}
    redis_commands, redis_hits = 0, 0.0
    try:
        urls = {
            "direct": (f"http://127.0.0.1:{stack.mock_port}/v1", "m", stack.gw_port),
            "pass": (f"http://127.0.0.1:{stack.gw_port}/v1", "m", stack.gw_port),
            "hit": (f"http://127.0.0.1:{stack.gw_port}/v1", "c", stack.gw_port),
            "hit-redis": (f"http://127.0.0.1:{stack.rgw_port}/v1", "c", stack.rgw_port),
        }
        # Store the prompts the hit targets ask: every request of a hit run is then a hit.
        for name in ("hit", "hit-redis"):
            url, model, _ = urls[name]
            run_load(args.sluice, url, model, work / "warm.json", concurrency=4, duration=1,
                     repeat=(1.0, PROMPTS_FOR_HITS), warmup="0s")
        time.sleep(0.5)  # the writer thread stores asynchronously
        loads = [("throughput", {"concurrency": args.concurrency})] + [
            (f"rate/{r}", {"rate": r}) for r in args.rates]
        for rep in range(args.repeats):
            for cell, load in loads:
                order = TARGETS[rep % len(TARGETS):] + TARGETS[: rep % len(TARGETS)]
                for name in order:
                    url, model, gw = urls[name]
                    before_calls = redis_calls(stack.redis_port) if name == "hit-redis" else None
                    before = lookups(gw)
                    r = run_load(args.sluice, url, model, work / "r.json", duration=args.duration,
                                 repeat=(1.0, PROMPTS_FOR_HITS) if name.startswith("hit") else None,
                                 **load)
                    seen = {o: v - before[o] for o, v in lookups(gw).items()}
                    hits = seen["hit"]
                    if name.startswith("hit"):
                        r["hit_ratio"] = hits / max(sum(seen.values()), 1)
                    if before_calls is not None:
                        after = redis_calls(stack.redis_port)
                        # INFO itself is one call per reading; it is not the gateway's.
                        used = sum(after.values()) - sum(before_calls.values()) - 1
                        redis_commands += used
                        redis_hits += hits
                        r["redis_commands_per_hit"] = used / hits if hits else None
                    cells[name].setdefault(cell, []).append(r)
                    print(f"rep {rep + 1} {cell:>12} {name:>9}: {r['achieved']:8.0f}/s  p50 {r['p50']:.3f} ms"
                          f"  p99 {r['p99']:.3f} ms  errors {r['errors']}"
                          + (f"  hits {hits:.0f}" if name.startswith("hit") else "")
                          + (f"  redis cmds/hit {r['redis_commands_per_hit']:.3f}"
                             if r.get("redis_commands_per_hit") is not None else ""), flush=True)
    finally:
        stop_all(stack.procs)
    return cells, (redis_commands / redis_hits if redis_hits else None)


def mixed_workload(args, work, share):
    """Part 2: cache on against off under a share of repeated prompts, streaming."""
    stack = CacheStack(args.sluice, work, "default")
    runs = {"on": [], "off": []}
    try:
        url = f"http://127.0.0.1:{stack.gw_port}/v1"
        for rep in range(args.repeats):
            for mode in (["on", "off"] if rep % 2 == 0 else ["off", "on"]):
                before = lookups(stack.gw_port)
                r = run_load(args.sluice, url, "c", work / "mixed.json", rate=args.mixed_rate,
                             duration=args.mixed_duration, stream=True, input_tokens=512,
                             output_tokens=64, seed=1000 + 2 * rep + (mode == "off"),
                             repeat=(share, args.repeat_prompts),
                             headers=[f"x-sluice-cache: {mode}"], warmup="0s")
                seen = {o: v - before[o] for o, v in lookups(stack.gw_port).items()}
                r["hit_ratio"] = seen["hit"] / max(sum(seen.values()), 1)
                runs[mode].append(r)
                print(f"rep {rep + 1} share {share} cache {mode:>3}: {r['achieved']:.1f}/s  ttft p50 {r['ttft_p50']:.2f} ms"
                      f"  p90 {r['ttft_p90']:.2f} ms  hit ratio {r['hit_ratio']:.3f}  errors {r['errors']}",
                      flush=True)
    finally:
        stop_all(stack.procs)
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summary(saved):
    lines = cost_summary(saved) if saved.get("cells") else []
    for share, mixed in (saved.get("mixed") or {}).items():
        lines += ["", f"Part 2: streaming, {saved['mixed_rate']} req/s for {saved['mixed_duration']} s per run, "
                  f"512-token prompts, 64 output tokens; {round(100 * float(share))} % of requests "
                  f"repeat one of {saved['repeat_prompts']} prompts; mock with its default timing; "
                  f"{len(mixed['on'])} runs each, medians.", "",
                  "| cache | hit ratio | TTFT p50 (ms) | TTFT p90 (ms) | TTFT mean (ms) | E2E p50 (ms) | errors |",
                  "|---|---|---|---|---|---|---|"]
        for mode in ("on", "off"):
            rs = mixed[mode]
            lines.append(f"| {mode} | {med(r['hit_ratio'] for r in rs):.3f} | {med(r['ttft_p50'] for r in rs):.2f} "
                         f"| {med(r['ttft_p90'] for r in rs):.2f} | {med(r['ttft_mean'] for r in rs):.2f} "
                         f"| {med(r['p50'] for r in rs):.2f} | {sum(r['errors'] for r in rs)} |")
    return "\n".join(lines)


def cost_summary(saved):
    cells = saved["cells"]
    lines = [f"Part 1: unary, zero-timing mock; {saved['repeats']} repeats, medians.", "",
             f"| target | closed loop ({saved['concurrency']} in flight) req/s | "
             + " | ".join(f"{c.split('/')[1]} req/s: p50 / p99 (ms)" for c in cells["direct"] if c != "throughput")
             + " | errors |",
             "|---|---|" + "---|" * (len(cells["direct"]) - 1) + "---|"]
    for name in TARGETS:
        row = cells[name]
        lines.append(
            f"| {name} | {med(r['achieved'] for r in row['throughput']):.0f} | "
            + " | ".join(f"{med(r['p50'] for r in rs):.3f} / {med(r['p99'] for r in rs):.3f}"
                         for c, rs in row.items() if c != "throughput")
            + f" | {sum(r['errors'] for rs in row.values() for r in rs)} |")
    tp = {n: med(r["achieved"] for r in cells[n]["throughput"]) for n in TARGETS}
    lines += ["", f"Hit throughput ÷ pass-through throughput: embedded {tp['hit'] / tp['pass']:.2f}, "
              f"Redis {tp['hit-redis'] / tp['pass']:.2f} (target ≥ 1)."]
    for c in cells["direct"]:
        if c == "throughput":
            continue
        d = lambda n, k: med(r[k] for r in cells[n][c])
        lines.append(
            f"At {c.split('/')[1]} req/s: the gateway's overhead on a miss (pass − direct) p50 "
            f"{d('pass', 'p50') - d('direct', 'p50'):+.3f} / p99 {d('pass', 'p99') - d('direct', 'p99'):+.3f} ms; "
            f"a hit's whole latency p50 {d('hit', 'p50'):.3f} / p99 {d('hit', 'p99'):.3f} ms; "
            f"Redis adds to a hit p50 {d('hit-redis', 'p50') - d('hit', 'p50'):+.3f} / "
            f"p99 {d('hit-redis', 'p99') - d('hit', 'p99'):+.3f} ms.")
    ratios = [r.get("hit_ratio") for rs in cells["hit"].values() for r in rs]
    lines.append(f"Hit runs' lookups that were hits: lowest {min(ratios):.3f} (every lookup, warm-up included).")
    if saved.get("redis_commands_per_hit") is not None:
        lines.append(f"Redis commands per hit (INFO commandstats ÷ the gateway's hits): "
                     f"{saved['redis_commands_per_hit']:.3f} (target 1).")
    return lines



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rates", default="1000,5000")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--mixed-rate", type=float, default=20)
    ap.add_argument("--mixed-duration", type=int, default=30)
    ap.add_argument("--repeat-shares", default="0.5,0.8", help="one mixed run set per share")
    ap.add_argument("--repeat-prompts", type=int, default=50)
    ap.add_argument("--skip-mixed", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--summarize", metavar="JSON")
    args = ap.parse_args()
    if args.summarize:
        print(summary(json.loads(Path(args.summarize).read_text())))
        return 0
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    args.rates = [int(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sluice-cache-bench-"))
    try:
        cells, per_hit = None, None
        if not args.skip_cost:
            (work / "cost").mkdir()
            cells, per_hit = cost_of_a_hit(args, work / "cost")
        mixed = {}
        if not args.skip_mixed:
            for share in args.repeat_shares.split(","):
                (work / f"mixed-{share}").mkdir()
                mixed[share] = mixed_workload(args, work / f"mixed-{share}", float(share))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    saved = {"cells": cells, "redis_commands_per_hit": per_hit, "repeats": args.repeats,
             "concurrency": args.concurrency, "mixed": mixed, "mixed_rate": args.mixed_rate,
             "mixed_duration": args.mixed_duration,
             "repeat_prompts": args.repeat_prompts}
    table = summary(saved)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"cache-{stamp}.md").write_text(table + "\n")
    (out / f"cache-{stamp}.json").write_text(json.dumps(saved, indent=1))
    print(f"\nwritten to {out}/cache-{stamp}.md")


if __name__ == "__main__":
    sys.exit(main())
