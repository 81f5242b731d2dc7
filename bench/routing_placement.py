#!/usr/bin/env python3
"""Placement: where requests go decides how much of their prompts engines find cached.

Four mock engines (`sluice mock`, realistic prefill: 20 ms + 100 µs a prompt token not in
its prefix cache; a cache of --cache-blocks blocks; KV events published) behind one
`sluice serve`, the same multi-turn workload (`sluice load --workload multi-turn`: every
turn resends the conversation so far plus a new question) for each policy: round_robin,
least_loaded, prefix_aware. Reported per policy, from the load generator and the engines'
own counters:

- TTFT p50 and p99 (target: prefix_aware's p50 at least 2× better than round robin's);
- the cached-token ratio (cached prompt tokens over prompt tokens, from the engines), against
  the ideal: the same workload sent straight to one engine with an unbounded cache (target:
  within 10 % of it);
- throughput, and load spread: each engine's requests over the mean (target: none above 1.5×).

The workload's `x-session-id` headers are ignored (no session_ttl): placement is the policy's.

Two workloads: `--system-prompt-tokens 512` (the default: every conversation opens with the
same system prompt, which every engine soon caches whatever the policy) and
`--system-prompt-tokens 0` (conversations share nothing: only placement keeps a
conversation's history cached).

Each policy's `sluice load` report is kept beside the table (`routing-STAMP-POLICY.load.json`),
`sluice load compare` judges prefix_aware against round robin, and with `--baseline FILE` the
prefix_aware report against a baseline kept in the repository (exit 3 on a regression).

Usage: bench/routing.sh [--rate 8] [--minutes 2] [--turns 6] [--cache-blocks 3000]
                        [--system-prompt-tokens 512] [--baseline bench/baselines/FILE.json]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from overhead import free_port, start, stop_all, wait_port

POLICIES = ("round_robin", "least_loaded", "prefix_aware")


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=5) as r:
        return json.loads(r.read())


def engine(sluice, args, procs, cache_blocks, events=True):
    port = free_port()
    cmd = [sluice, "mock", "--listen", f"127.0.0.1:{port}", "--ttft-base", "20ms",
           "--prefill-per-token", "100us", "--decode-interval", "5ms",
           "--kv-capacity-blocks", str(cache_blocks), "--seed", "1"]
    kv = None
    if events:
        kv = (free_port(), free_port())
        cmd += ["--kv-events", f"tcp://127.0.0.1:{kv[0]}", "--kv-replay", f"tcp://127.0.0.1:{kv[1]}"]
    procs.append(start(cmd))
    wait_port(port)
    return port, kv


def load(sluice, url, args, out):
    cmd = [sluice, "load", "--url", url, "--model", "m", "--workload", "multi-turn",
           "--turns", str(args.turns), "--system-prompt-tokens", str(args.system_prompt_tokens),
           "--input-tokens", str(args.input_tokens), "--think-time", args.think_time,
           "--output-tokens", str(args.output_tokens), "--rate", str(args.rate), "--duration", f"{int(args.minutes * 60)}s",
           "--warmup", "0s", "--timeout", "60s", "--max-error-rate", "1", "--seed", "7",
           "--json", str(out)]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    s = json.loads(out.read_text())["runs"][0]["summary"]
    ttft = s["latency"].get("ttft") or {}
    return {"ttft_p50": ttft.get("p50_ms"), "ttft_p99": ttft.get("p99_ms"),
            "requests": s["requests"]["total"], "errors": s["requests"]["failed"],
            "throughput": s["throughput"]["requests_per_s"]}


def cached_ratio(ports):
    st = [stats(p) for p in ports]
    prompt = sum(s["prompt_tokens_total"] for s in st)
    cached = sum(s["cached_tokens_total"] for s in st)
    return cached / prompt if prompt else float("nan"), [s["requests_total"] for s in st]


def run_policy(sluice, work, args, policy):
    procs = []
    try:
        engines = [engine(sluice, args, procs, args.cache_blocks) for _ in range(4)]
        gw = free_port()
        config = work / f"{policy}.toml"
        text = f'[server]\nlisten = "127.0.0.1:{gw}"\naccess_log = false\n[models.m]\n'
        for i, (port, kv) in enumerate(engines):
            text += (f'[[models.m.endpoints]]\nname = "engine-{i}"\nurl = "http://127.0.0.1:{port}/v1"\n')
            if policy == "prefix_aware":
                text += f'kv_events = "tcp://127.0.0.1:{kv[0]}"\nkv_replay = "tcp://127.0.0.1:{kv[1]}"\n'
        text += f'[models.m.routing]\npolicy = "{policy}"\n'
        if policy == "prefix_aware":
            text += 'tokenizer = "mock"\n'
        config.write_text(text)
        procs.append(start([sluice, "serve", "--config", str(config)]))
        wait_port(gw)
        time.sleep(1)
        result = load(sluice, f"http://127.0.0.1:{gw}/v1", args, work / f"{policy}.json")
        ratio, per_engine = cached_ratio([p for p, _ in engines])
        mean = sum(per_engine) / len(per_engine)
        result.update({"policy": policy, "cached_ratio": ratio, "per_engine": per_engine,
                       "max_over_mean": max(per_engine) / mean if mean else float("nan")})
        print(json.dumps(result), flush=True)
        return result
    finally:
        stop_all(procs)


def ideal(sluice, work, args):
    procs = []
    try:
        port, _ = engine(sluice, args, procs, 10_000_000, events=False)
        result = load(sluice, f"http://127.0.0.1:{port}/v1", args, work / "ideal.json")
        ratio, _ = cached_ratio([port])
        result.update({"policy": "one engine, unbounded cache", "cached_ratio": ratio})
        print(json.dumps(result), flush=True)
        return result
    finally:
        stop_all(procs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rate", type=float, default=8, help="requests per second")
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--cache-blocks", type=int, default=3000, help="each engine's prefix cache")
    ap.add_argument("--system-prompt-tokens", type=int, default=512,
                    help="a system prompt every conversation shares (0: none)")
    ap.add_argument("--input-tokens", type=int, default=128, help="each turn's new prompt tokens")
    ap.add_argument("--output-tokens", type=int, default=32, help="each answer's tokens")
    ap.add_argument("--think-time", default="0",
                    help="a user's pause between turns (sluice load --think-time: 0, 5s, exp:5s)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    ap.add_argument("--baseline", help="a prefix_aware load report to compare this run's against")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sluice-routing-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        best = ideal(args.sluice, work, args)
        policies = [p for p in args.policies.split(",") if p in POLICIES]
        results = [run_policy(args.sluice, work, args, p) for p in policies]
        for p in policies:
            shutil.copy(work / f"{p}.json", out / f"routing-{stamp}-{p}.load.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compare = lambda base, new: subprocess.run(
        [args.sluice, "load", "compare", str(base), str(new)], capture_output=True, text=True)
    verdict = compare(out / f"routing-{stamp}-round_robin.load.json",
                      out / f"routing-{stamp}-prefix_aware.load.json")
    print("\nsluice load compare: round_robin (baseline) → prefix_aware\n" + verdict.stdout)
    regressed = False
    if args.baseline:
        verdict = compare(args.baseline, out / f"routing-{stamp}-prefix_aware.load.json")
        print(f"sluice load compare: {args.baseline} → this run's prefix_aware (exit {verdict.returncode})\n"
              + verdict.stdout + verdict.stderr)
        regressed = verdict.returncode == 3
    rr = next(r for r in results if r["policy"] == "round_robin")
    lines = ["| policy | TTFT p50 ms | TTFT p99 ms | cached-token ratio (ideal "
             f"{best['cached_ratio']:.3f}) | throughput req/s | busiest engine ÷ mean | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        speedup = rr["ttft_p50"] / r["ttft_p50"] if r["ttft_p50"] else float("nan")
        lines.append(f"| {r['policy']} | {r['ttft_p50']:.1f} ({speedup:.2f}× round robin) | {r['ttft_p99']:.1f} "
                     f"| {r['cached_ratio']:.3f} ({r['cached_ratio'] / best['cached_ratio']:.2f}× ideal) "
                     f"| {r['throughput']:.2f} | {r['max_over_mean']:.2f} | {r['errors']} |")
    table = "\n".join(lines)
    print()
    print(table)
    (out / f"routing-{stamp}.md").write_text(table + "\n")
    (out / f"routing-{stamp}.json").write_text(json.dumps({"args": vars(args), "ideal": best, "results": results}, indent=1))
    print(f"\nwritten to {out}/routing-{stamp}.md")
    return 3 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
