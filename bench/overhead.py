#!/usr/bin/env python3
"""Gateway overhead, side by side in one run: the same open-loop load, driven by `sluice load`,
straight to a zero-timing `sluice mock`, through nginx as a plain reverse proxy, and through
`sluice serve`. Reports per rate the latency each proxy adds over direct (p50, p99), the
highest rate each sustains with < 0.1 % errors, and sluice's CPU and peak memory.

Every (rate, target) cell is measured `--repeats` times, targets interleaved in a rotating
order, and the median of the repeats is reported: on a small shared machine single runs swing
by more than the differences being measured.

How sure a cell is: the table gives, next to each ratio, a 90 % interval from resampling the
repeats (a repeat's direct, nginx and sluice runs stay together). A ratio whose interval
straddles the 1.5x target is not decided by the run, whichever side its median falls on.

With `--stream`, every request streams: 64 SSE events per answer (`--output-tokens 64`),
the traffic LLM clients mostly send; latency is then the whole stream's (end to end) and the
time to first token is reported beside it. nginx relays with `proxy_buffering off`.

Usage: bench/overhead.sh [--rates 1000,2000,5000,10000] [--duration 10] [--repeats 3]
                         [--max-connections 512] [--connection-reuse spread|recent] [--stream]
       python3 bench/overhead.py --summarize bench/results/overhead-STAMP.json
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

URL_RE = re.compile(r"http://127\.0\.0\.1:\d+")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(cmd, env=None):
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn", **(env or {})},
    )


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  upstream mock {{ server 127.0.0.1:{mock}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def stop_all(procs):
    """SIGTERM every process, then wait (killing whatever does not stop within 15 s)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


class ProxyStack:
    """A zero-timing mock with `sluice serve` and nginx in front of it, on free loopback
    ports; `procs` is everything started, for `stop_all`."""

    def __init__(self, sluice, work, auth_audit=False):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        (work / "tmp").mkdir(exist_ok=True)
        self.procs = []
        self.mock_port, self.gw_port, self.nginx_port = free_port(), free_port(), free_port()
        self.procs.append(start([sluice, "mock", "--listen", f"127.0.0.1:{self.mock_port}", "--zero-timing"]))
        wait_port(self.mock_port)
        (work / "gw.toml").write_text(
            # No access log, as nginx runs with `access_log off`: both pay only for proxying.
            f'[server]\nlisten = "127.0.0.1:{self.gw_port}"\naccess_log = false\n[models.m]\n'
            f'[[models.m.endpoints]]\nurl = "http://127.0.0.1:{self.mock_port}/v1"\n'
        )
        self.gateway = start([sluice, "serve", "--config", str(work / "gw.toml")])
        self.procs.append(self.gateway)
        (work / "nginx.conf").write_text(
            NGINX_CONF.format(workers=os.cpu_count(), dir=work, mock=self.mock_port, port=self.nginx_port)
        )
        self.nginx = start([nginx, "-c", str(work / "nginx.conf")])
        self.procs.append(self.nginx)
        wait_port(self.gw_port)
        wait_port(self.nginx_port)
        self.auth_gateway, self.auth_port, self.api_key = None, None, None
        if auth_audit:
            # The same gateway with API keys and the audit log (a file, content `snippet`).
            self.auth_port = free_port()
            (work / "gwa.toml").write_text(
                f'[server]\nlisten = "127.0.0.1:{self.auth_port}"\naccess_log = false\ndata_dir = "{work}/data"\n'
                f'[auth]\nmode = "keys"\n[audit]\nsink = "file"\npath = "{work}/audit.jsonl"\ncontent = "snippet"\n'
                f'[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:{self.mock_port}/v1"\n'
            )
            made = subprocess.run([sluice, "keys", "--config", str(work / "gwa.toml"), "create",
                                   "--tenant", "bench", "--scopes", "chat:write", "--name", "bench"],
                                  capture_output=True, text=True, check=True)
            self.api_key = made.stdout.strip().splitlines()[-1]
            self.auth_gateway = start([sluice, "serve", "--config", str(work / "gwa.toml")])
            self.procs.append(self.auth_gateway)
            wait_port(self.auth_port)


STREAM_EVENTS = 64


def run_load(sluice, url, rate, duration, out, max_connections, connection_reuse, stream=False, api_key=None):
    shape = ["--output-tokens", str(STREAM_EVENTS)] if stream else ["--no-stream", "--output-tokens", "16"]
    cmd = [
        sluice, "load", "--url", url, "--model", "m", "--rate", str(rate),
        "--duration", f"{duration}s", "--warmup", "2s", *shape,
        "--input-tokens", "32", "--timeout", "10s",
        "--max-connections", str(max_connections), "--connection-reuse", connection_reuse,
        "--max-error-rate", "1", "--json", str(out),
        *(["--api-key", api_key] if api_key else []),
    ]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    report = json.loads(out.read_text())
    s = report["runs"][0]["summary"]
    e2e = s["latency"]["e2e"] or {}
    total = max(s["requests"]["total"], 1)
    gen = s["generator"]
    ttft = s["latency"].get("ttft") or {}
    return {
        "p50": e2e.get("p50_ms", float("nan")),
        "p99": e2e.get("p99_ms", float("nan")),
        "ttft_p99": ttft.get("p99_ms"),
        "error_rate": s["requests"]["failed"] / total,
        "achieved": s["throughput"]["requests_per_s"],
        "generator_cpu": gen.get("cpu_percent_of_all_cores"),
        "generator_bottleneck": gen.get("likely_bottleneck"),
        "connections_opened": gen.get("connections_opened"),
        "connection_cap_hit": gen.get("connection_cap_hit"),
        # CPU time the hypervisor took from the VM during the run: pauses of the whole machine.
        "steal_percent": gen.get("steal_percent"),
    }


NAMES = ["direct", "nginx", "sluice"]
AUTH = "sluice+auth+audit"
TARGET_RATIO = 1.5


def added(cells, rate, name, key, picks=None):
    """Median over repeats of each repeat's proxy value minus the same repeat's direct value."""
    proxy, direct = cells[f"{rate}/{name}"], cells[f"{rate}/direct"]
    picks = range(min(len(proxy), len(direct))) if picks is None else picks
    return statistics.median(proxy[i][key] - direct[i][key] for i in picks)


def ratio(cells, rate, picks=None, name="sluice"):
    """`name`'s added p99 over nginx's; infinite when nginx added nothing."""
    nginx = added(cells, rate, "nginx", "p99", picks)
    return added(cells, rate, name, "p99", picks) / nginx if nginx > 0 else float("inf")


def ratio_interval(cells, rate, resamples=2000, name="sluice"):
    """5th and 95th percentiles of the ratio over resampled repeats (seeded: the same file
    always gives the same interval)."""
    n = min(len(cells[f"{rate}/{t}"]) for t in NAMES + [name])
    rng = random.Random(rate)
    values = sorted(ratio(cells, rate, [rng.randrange(n) for _ in range(n)], name) for _ in range(resamples))
    return values[int(0.05 * resamples)], values[int(0.95 * resamples) - 1]


def summary(saved):
    cells = saved["cells"]
    rates = sorted({int(k.split("/")[0]) for k in cells})

    def med(rate, name, key):
        return statistics.median(c[key] for c in cells[f"{rate}/{name}"])

    def sustains(rate, name):
        return all(c["error_rate"] < 0.001 and c["achieved"] >= 0.97 * rate for c in cells[f"{rate}/{name}"])

    def verdict(low, high):
        if high <= TARGET_RATIO:
            return "met"
        if low > TARGET_RATIO:
            return "missed"
        return "undecided"

    mode = saved.get("mode", "unary")
    lines = [
        f"Mode: {mode}" + (f" ({STREAM_EVENTS} SSE events per answer; latency is the whole stream's)" if mode == "stream" else "") + ".",
        "",
        "| rate (req/s) | direct p50 / p99 (ms) | nginx added p50 / p99 (ms) | sluice added p50 / p99 (ms) "
        "| sluice p99 ÷ nginx p99 (added) | 90 % interval, target 1.5x | sluice CPU (% of one core) "
        "| errors direct / nginx / sluice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = NAMES + ([AUTH] if f"{rates[0]}/{AUTH}" in cells else [])
    for rate in rates:
        low, high = ratio_interval(cells, rate)
        errs = " / ".join(f"{100 * med(rate, n, 'error_rate'):.2f} %" for n in NAMES)
        cpu = saved.get("sluice_cpu", {}).get(str(rate))
        lines.append(
            f"| {rate} | {med(rate, 'direct', 'p50'):.3f} / {med(rate, 'direct', 'p99'):.3f} "
            f"| {added(cells, rate, 'nginx', 'p50'):+.3f} / {added(cells, rate, 'nginx', 'p99'):+.3f} "
            f"| {added(cells, rate, 'sluice', 'p50'):+.3f} / {added(cells, rate, 'sluice', 'p99'):+.3f} "
            f"| {ratio(cells, rate):.2f} | {low:.2f}–{high:.2f}: {verdict(low, high)} "
            f"| {f'{statistics.median(cpu):.0f}' if cpu else '–'} | {errs} |"
        )
    if AUTH in names:
        lines += ["", f"With API keys and the audit log (`{AUTH}`, the same load with a key), side by side:", "",
                  "| rate (req/s) | sluice added p50 / p99 (ms) | with keys + audit added p50 / p99 (ms) "
                  "| with keys + audit ÷ nginx (added p99) | 90 % interval, target 1.5x | errors |",
                  "|---|---|---|---|---|---|"]
        for rate in rates:
            low, high = ratio_interval(cells, rate, name=AUTH)
            lines.append(
                f"| {rate} | {added(cells, rate, 'sluice', 'p50'):+.3f} / {added(cells, rate, 'sluice', 'p99'):+.3f} "
                f"| {added(cells, rate, AUTH, 'p50'):+.3f} / {added(cells, rate, AUTH, 'p99'):+.3f} "
                f"| {ratio(cells, rate, name=AUTH):.2f} | {low:.2f}–{high:.2f}: {verdict(low, high)} "
                f"| {100 * med(rate, AUTH, 'error_rate'):.2f} % |")
    best = {n: max([r for r in rates if sustains(r, n)], default=None) for n in names}
    lines.append("")
    peak = saved.get("peak_rss_mib")
    lines.append("Highest rate sustained (< 0.1 % errors, ≥ 97 % of the target rate achieved, every repeat): "
                 + ", ".join(f"{n} {best[n] or 'none'}" for n in names)
                 + (f". sluice peak RSS {peak:.1f} MiB." if peak is not None else "."))
    gen_flags = sorted({int(k.split("/")[0]) for k, cs in cells.items() if any(c.get("generator_bottleneck") for c in cs)})
    if gen_flags:
        lines.append(f"The load generator flagged itself as a possible bottleneck at rates {gen_flags} "
                     "(it shares the 2 cores with the servers).")
    capped = sorted({int(k.split("/")[0]) for k, cs in cells.items() if any(c.get("connection_cap_hit") for c in cs)})
    if "max_connections" in saved:
        lines.append(f"Each run could open at most {saved['max_connections']} connections"
                     + f" and reused them `--connection-reuse {saved['connection_reuse']}`"
                     + (f"; the cap held requests back at rates {capped} (that wait counts in their latency)."
                        if capped else "; no run reached the cap."))
    # Runs saved before a field existed lack it.
    steals = [c["steal_percent"] for cs in cells.values() for c in cs if c.get("steal_percent") is not None]
    if steals:
        again = saved.get("repeated_for_steal")
        lines.append(f"Steal (CPU time the hypervisor took from this VM) per run: median {statistics.median(steals):.2f} %, "
                     f"max {max(steals):.2f} %; runs at 0.5 % or more: {sum(1 for x in steals if x >= 0.5)} of {len(steals)}"
                     + (f"; runs discarded and run again for steal over {saved['max_steal']:g} %: {again}." if again is not None else "."))
    lines += ["", "p99 (ms) per repeat, in the order run:", "", "| rate | " + " | ".join(names) + " |",
              "|" + "---|" * (len(names) + 1)]
    for rate in rates:
        lines.append(f"| {rate} | " + " | ".join(
            ", ".join(f"{c['p99']:.2f}" for c in cells[f"{rate}/{n}"]) for n in names) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rates", default="1000,2000,5000,10000")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    # The same cap for every target. Without one, a scheduling stall on this shared machine
    # makes the generator open hundreds of connections at once (it opens one per request
    # that finds none idle), each proxy then opens as many upstream, and the storm and the
    # TIME_WAIT sockets it leaves behind spill into the cells measured after it. Requests
    # held back by the cap are measured from their scheduled time, so the wait counts.
    ap.add_argument("--max-connections", type=int, default=512)
    # `recent` (the generator's default) is one client's pool: one or two connections, and so
    # one worker of each server, carry almost everything. `spread` stands for many clients:
    # every open connection takes its turn, so each server's workers share the load.
    ap.add_argument("--connection-reuse", choices=["spread", "recent"], default="recent")
    # Steal is CPU time the hypervisor gave to another guest: it pauses every process here at
    # once, whoever is measured, and on this host it comes in bursts. A run that lost more than
    # this share of the machine is run again (at most --steal-retries times; the last attempt
    # counts whatever its steal), so that a burst does not decide a cell. Every repeat is
    # printed and counted in the summary.
    ap.add_argument("--max-steal", type=float, default=1.0, help="percent of the machine")
    ap.add_argument("--steal-retries", type=int, default=3)
    ap.add_argument("--stream", action="store_true",
                    help=f"every request streams {STREAM_EVENTS} SSE events (default: unary answers)")
    ap.add_argument("--auth-audit", action="store_true",
                    help="also measure a second sluice with API keys and the audit log on")
    ap.add_argument("--summarize", metavar="JSON",
                    help="print the summary of a saved run (its overhead-*.json) and measure nothing")
    args = ap.parse_args()
    if args.summarize:
        saved = json.loads(Path(args.summarize).read_text())
        print(summary(saved))
        return 0
    rates = [int(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sluice-overhead-"))
    procs = []
    try:
        stack = ProxyStack(args.sluice, work, args.auth_audit)
        procs = stack.procs
        gateway = stack.gateway
        targets = {
            "direct": f"http://127.0.0.1:{stack.mock_port}/v1",
            "nginx": f"http://127.0.0.1:{stack.nginx_port}/v1",
            "sluice": f"http://127.0.0.1:{stack.gw_port}/v1",
        }
        if args.auth_audit:
            targets[AUTH] = f"http://127.0.0.1:{stack.auth_port}/v1"
        names = list(targets)
        cells = {}
        sluice_cpu = {}
        repeated_for_steal = 0
        for rep in range(args.repeats):
            for rate in rates:
                order = names[rep % len(names):] + names[: rep % len(names)]
                for name in order:
                    for attempt in range(args.steal_retries + 1):
                        before = cpu_seconds(gateway.pid)
                        t0 = time.time()
                        r = run_load(args.sluice, targets[name], rate, args.duration, work / "r.json",
                                     args.max_connections, args.connection_reuse, args.stream,
                                     stack.api_key if name == AUTH else None)
                        used = cpu_seconds(gateway.pid) - before
                        stolen = r["steal_percent"] or 0
                        again = stolen > args.max_steal and attempt < args.steal_retries
                        print(f"rep {rep + 1} rate {rate:>6} {name:>6}: p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                              f"  errors {100 * r['error_rate']:.3f} %  achieved {r['achieved']:.0f}/s"
                              f"  connections {r['connections_opened']}{' (cap hit)' if r['connection_cap_hit'] else ''}"
                              f"  steal {stolen:.1f} %{'  (over --max-steal: run again)' if again else ''}", flush=True)
                        if not again:
                            break
                        repeated_for_steal += 1
                    if name == "sluice":
                        sluice_cpu.setdefault(rate, []).append(100 * used / (time.time() - t0))
                    cells.setdefault((rate, name), []).append(r)
        peak_mem = peak_rss_mib(gateway.pid)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)

    saved = {
        "mode": "stream" if args.stream else "unary",
        "cells": {f"{rate}/{name}": cs for (rate, name), cs in cells.items()},
        "sluice_cpu": {str(rate): v for rate, v in sluice_cpu.items()},
        "peak_rss_mib": peak_mem,
        "max_connections": args.max_connections,
        "connection_reuse": args.connection_reuse,
        "max_steal": args.max_steal,
        "repeated_for_steal": repeated_for_steal,
    }
    table = summary(saved)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = ("stream-" if args.stream else "") + time.strftime("%Y%m%d-%H%M%S")
    (out / f"overhead-{stamp}.md").write_text(table + "\n")
    (out / f"overhead-{stamp}.json").write_text(json.dumps(saved, indent=1))
    print(f"\nwritten to {out}/overhead-{stamp}.md")


if __name__ == "__main__":
    sys.exit(main())
