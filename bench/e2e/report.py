#!/usr/bin/env python3
"""Table and JSON for bench/e2e/run.sh (Python 3 standard library only).

    report.py RAW_DIR [--json OUT.json]

RAW_DIR holds what run.sh wrote: env.txt (key=value), peers.tsv (key,
label, in run order) and one directory per round (round-1, round-2, ...),
each with measure.tsv (peer, workload, key, value: exit codes, CPU clock
ticks and RSS of both sidecars, audit log volume) and, per peer, the tools'
own output: h1.txt / h1close.txt (wrk --latency), h2.txt (h2load), tcp.json
(iperf3 -J), idle.json (idle.py), rate-<h1|h2>-<rate>.txt and .log (h2load
at a fixed rate, one line per request). A RAW_DIR without round-* dirs is
read as one round (what run.sh wrote before --repeat).

Every figure is first computed per round. The table shows, for each peer,
the median over the rounds with its min-max when there are several, and its
ratio to the reference peer (env.txt `reference`: haproxy, h×, on loopback;
ztunnel, z×, in the mesh) and to direct (d×) taken within each round (peer
value / reference value of the same round) before the median: > 1 is more
of it (better for req/s and Gbit/s; worse for latency, CPU and memory).
Peers with two workers (key ending in -w2) are compared with haproxy-w2.

Latency at a fixed rate is shown as added over direct in the same round
(peer's percentile minus direct's); direct's own column shows its latency.
The targets of issue 17 (loopback) or issue 19 (env.txt `topology=mesh`)
are checked at the end (and in the JSON).
"""

import argparse
import json
import os
import re
import statistics
import sys

# Above this share of the machine used by other processes during a workload,
# its figures are flagged.
OTHER_LOAD_LIMIT = 0.10
# Above this ratio between direct's fastest and slowest round of a workload,
# the machine changed speed under the run (a VM's host got busier: seen here
# as direct keep-alive 192k, 210k, then 113k req/s): ratios are still taken
# within rounds, but a median over rounds of two machines is flagged.
STEADY_LIMIT = 1.3
STEADY_METRICS = ("h1_rps", "h1close_rps", "h2_rps", "tcp_gbps")

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

PROTOS = {"h1": "HTTP/1.1", "h2": "gRPC-like HTTP/2"}
# How run.sh placed and paced the fixed-rate runs (env.txt rate_layout,
# rate_arrivals; runs before they were recorded: the same cores, bursts).
RATE_LAYOUTS = {
    "pods": "each sidecar on its app's CPU (client sidecar with the load generator, server sidecar with "
            "the backend; direct crosses the same two CPUs; two-worker peers keep every CPU)",
    "apart": "the cores above (direct crosses no CPU, the pair four times a request)",
}
RATE_ARRIVALS = {
    "burst": "h2load --rps: every connection sends in the same instant",
    "spread": "connections opened a millisecond apart (at 1000 req/s: a request every millisecond)",
}
# Percentiles in thousandths (integers: 99.9 has no exact float).
PERCENTILES = (("p50", 500), ("p99", 990), ("p999", 999))


def metric_list(rates):
    """(key, row label, unit, which way is better), in table order."""
    out = [
        ("h1_rps", "HTTP/1.1 keep-alive (wrk -c32)", "req/s", "higher"),
        ("h1_p50_ms", "  p50 latency", "ms", "lower"),
        ("h1_p99_ms", "  p99 latency", "ms", "lower"),
        ("h1_cpu_us_per_req", "  sidecar CPU per request", "µs", "lower"),
        ("h1close_rps", "new connection per request", "req/s", "higher"),
        ("h1close_p50_ms", "  p50 latency", "ms", "lower"),
        ("h1close_p99_ms", "  p99 latency", "ms", "lower"),
        ("h1close_cpu_us_per_req", "  sidecar CPU per request", "µs", "lower"),
        ("h2_rps", "HTTP/2 (h2load -c32 -m10)", "req/s", "higher"),
        ("h2_mean_ms", "  mean latency", "ms", "lower"),
        ("h2_cpu_us_per_req", "  sidecar CPU per request", "µs", "lower"),
        ("tcp_gbps", "bulk TCP (iperf3, 1 stream)", "Gbit/s", "higher"),
        ("tcp_cpu_s_per_gb", "  sidecar CPU per GB", "s/GB", "lower"),
        ("idle_kib_per_conn", "idle connection (RSS, both sidecars)", "KiB", "lower"),
        ("start_rss_mb", "RSS at start, the larger sidecar", "MB", "lower"),
    ]
    for rate in rates:
        for proto, name in PROTOS.items():
            k = f"rate_{proto}_{rate}"
            out += [
                (f"{k}_rps", f"{name} at {rate} req/s: achieved", "req/s", "higher"),
                (f"{k}_p50_added_ms", "  p50 added over direct (direct: its own)", "ms", "lower"),
                (f"{k}_p99_added_ms", "  p99 added over direct (direct: its own)", "ms", "lower"),
                (f"{k}_p999_added_ms", "  p99.9 added over direct (direct: its own)", "ms", "lower"),
                (f"{k}_vcpu_per_krps", "  sidecar CPU per 1000 req/s", "vCPU", "lower"),
                (f"{k}_rss_mb", "  RSS, both sidecars", "MB", "lower"),
            ]
    return out


# Targets: (metric, peer, compared with, op, bound, what it is). "ratio"
# compares the peer's ratio to the reference (median of the rounds); "value"
# compares the peer's own median. Issue 17's, on loopback:
TARGETS_LOOPBACK = [
    ("h2_rps", "appid-default", "ratio", ">=", 1.0, "HTTP/2, L7 authorization on every request: ≥ 1.0× haproxy"),
    ("h1_rps", "appid-default", "ratio", ">=", 1.3, "HTTP/1.1 keep-alive, L7 authorization: ≥ 1.3× haproxy"),
    ("tcp_gbps", "appid-default", "ratio", ">=", 1.3, "bulk TCP: ≥ 1.3× haproxy"),
    ("h1close_rps", "appid-default", "ratio", ">=", 10.0, "new connection per request: ≥ 10× haproxy"),
    ("idle_kib_per_conn", "appid-default", "value", "<=", 20.0, "idle connection, both sidecars: ≤ 20 KiB"),
    ("rate_h1_1000_p99_added_ms", "appid-default", "value", "<", 0.298,
     "added p99 at 1000 req/s (HTTP/1.1): < Istio's +0.298 ms"),
    ("rate_h1_1000_vcpu_per_krps", "appid-default", "value", "<", 0.06,
     "CPU per 1000 req/s, both sidecars (HTTP/1.1): < ztunnel's 0.06 vCPU"),
]

# Issue 19's, in the mesh, against the ztunnel pair.
TARGETS_MESH = [
    ("h1_rps", "appid-l7", "ratio", ">=", 1.0,
     "HTTP/1.1 keep-alive, appid authorizing every request at L7: ≥ 1.0× ztunnel"),
    ("h1_rps", "appid-l4", "ratio", ">=", 1.2, "HTTP/1.1 keep-alive, appid with an L4 policy: ≥ 1.2× ztunnel"),
    ("tcp_gbps", "appid-l7", "ratio", ">=", 1.0, "bulk TCP: ≥ 1.0× ztunnel"),
    ("idle_kib_per_conn", "appid-l7", "ratio", "<=", 1.0, "idle memory per connection, both sides: ≤ ztunnel's"),
    ("start_rss_mb", "appid-l7", "value", "<=", 20.0, "base RSS: ≤ 20 MB per sidecar"),
]


def ms(text):
    """'245.00us' / '1.23ms' / '2.00s' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[f"p{pct}_ms"] = ms(m.group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        # wrk counts the server closing a 'Connection: close' response as a
        # read error only when bytes were lost; connect/write/timeout are real.
        out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
        errors += int(m.group(1))
    out["errors"] = errors
    return out


def parse_h2load(text):
    out = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        out["requests"] = done
        out["errors"] = failed + errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["non_2xx"] = sum(int(g) for g in m.groups()[2:])
        out["errors"] = out.get("errors", 0) + out["non_2xx"]
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["mean_ms"] = ms(m.group(3))
        out["max_ms"] = ms(m.group(2))
    return out


def percentile(sorted_values, permille):
    """Nearest-rank percentile (in thousandths) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * permille // 1000))  # ceil, in integers
    return sorted_values[rank - 1]


def parse_h2load_log(text):
    """h2load --log-file: start (µs since the epoch), status, latency (µs)."""
    latencies, bad = [], 0
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if not fields[1].startswith("2"):
            bad += 1
            continue
        latencies.append(int(fields[2]) / 1000.0)
    latencies.sort()
    out = {"logged": len(latencies) + bad, "non_2xx_logged": bad}
    for name, pct in PERCENTILES:
        out[f"{name}_ms"] = percentile(latencies, pct)
    return out


# Where run.sh put each workload's tool output (and so its .counts file).
OUTPUT_EXT = {"tcp": "json", "idle": "json"}


def parse_perf_counts(text):
    """perf stat -x, output (BENCH_SYSCALLS=1): both sidecars' syscalls and
    context switches."""
    if not text:
        return None
    out = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].strip().isdigit():
            continue
        if fields[2] == "raw_syscalls:sys_enter":
            out["syscalls"] = int(fields[0])
        elif fields[2] == "context-switches":
            out["context_switches"] = int(fields[0])
    return out if len(out) == 2 else None


def parse_iperf3(text):
    data = json.loads(text)
    out = {}
    if data.get("error"):
        out["error"] = data["error"]
    end = data.get("end", {})
    recv = end.get("sum_received") or {}
    if recv:
        out["bytes"] = recv["bytes"]
        out["gbps"] = recv["bits_per_second"] / 1e9
        out["seconds"] = recv["seconds"]
    sent = end.get("sum_sent") or {}
    out["retransmits"] = sent.get("retransmits")
    return out


def load_env(raw):
    env = {}
    for line in (read(os.path.join(raw, "env.txt")) or "").splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    peers = []
    for line in (read(os.path.join(raw, "peers.tsv")) or "").splitlines():
        if line.strip():
            key, label = line.split("\t", 1)
            peers.append({"key": key, "label": label})
    return env, peers


def round_dirs(raw):
    rounds = [d for d in os.listdir(raw) if re.fullmatch(r"round-\d+", d) and os.path.isdir(os.path.join(raw, d))]
    rounds.sort(key=lambda d: int(d.split("-")[1]))
    return [os.path.join(raw, d) for d in rounds] or [raw]


def load_measure(round_dir):
    measure = {}
    for line in (read(os.path.join(round_dir, "measure.tsv")) or "").splitlines():
        if line.strip():
            peer, wl, k, v = line.split("\t")
            measure.setdefault(peer, {}).setdefault(wl, {})[k] = float(v)
    return measure


def collect(rdir, env, peer, measure):
    """Per-workload detail and the flat metrics of one peer in one round."""
    tck = float(env.get("clk_tck") or 100)
    detail, metrics, problems = {}, {}, []
    m = measure.get(peer, {})

    def cpu_seconds(wl):
        w = m.get(wl, {})
        if "cpu_ticks_client" not in w:
            return None
        return (w["cpu_ticks_client"] + w["cpu_ticks_server"]) / tck

    def note_exit(wl):
        code = m.get(wl, {}).get("exit_code")
        if code:
            problems.append(f"{wl}: the tool exited {int(code)}")

    for wl, parser, ext in (("h1", parse_wrk, "txt"), ("h1close", parse_wrk, "txt"), ("h2", parse_h2load, "txt")):
        text = read(os.path.join(rdir, peer, f"{wl}.{ext}"))
        if text is None:
            continue
        note_exit(wl)
        d = parser(text)
        detail[wl] = d
        if "rps" not in d:
            problems.append(f"{wl}: no result in the tool's output")
            continue
        metrics[f"{wl}_rps"] = d["rps"]
        for k in ("p50_ms", "p99_ms", "mean_ms"):
            if k in d:
                metrics[f"{wl}_{k}"] = d[k]
        if d.get("errors"):
            problems.append(f"{wl}: {d['errors']} errors of {d.get('requests')} requests "
                            f"({json.dumps({k: d[k] for k in ('socket_errors', 'non_2xx') if k in d})})")
        cpu = cpu_seconds(wl)
        if cpu is not None and d.get("requests"):
            d["sidecar_cpu_seconds"] = cpu
            metrics[f"{wl}_cpu_us_per_req"] = cpu / d["requests"] * 1e6
        a = m.get(wl, {})
        if "audit_bytes" in a and d.get("requests"):
            d["audit_lines_per_request"] = a["audit_lines"] / d["requests"]
            d["audit_bytes_per_request"] = a["audit_bytes"] / d["requests"]

    for rate in (env.get("rates") or "").split():
        for proto in PROTOS:
            wl = f"rate-{proto}-{rate}"
            text = read(os.path.join(rdir, peer, f"{wl}.txt"))
            if text is None:
                continue
            note_exit(wl)
            d = parse_h2load(text)
            d.update(parse_h2load_log(read(os.path.join(rdir, peer, f"{wl}.log")) or ""))
            detail[wl] = d
            key = f"rate_{proto}_{rate}"
            if "rps" not in d or d.get("p50_ms") is None:
                problems.append(f"{wl}: no result in the tool's output")
                continue
            metrics[f"{key}_rps"] = d["rps"]
            for name, _ in PERCENTILES:
                # Made "added over direct" once every peer of the round is in.
                metrics[f"{key}_{name}_ms"] = d[f"{name}_ms"]
            if d.get("errors"):
                problems.append(f"{wl}: {d['errors']} errors of {d.get('requests')} requests")
            if d["rps"] < 0.95 * float(rate):
                problems.append(f"{wl}: only {d['rps']:.0f} of {rate} req/s were sent: the latencies "
                                f"are of a lower rate")
            w = m.get(wl, {})
            cpu = cpu_seconds(wl)
            if cpu is not None and w.get("wall_seconds") and d["rps"]:
                d["sidecar_cpu_seconds"] = cpu
                metrics[f"{key}_vcpu_per_krps"] = cpu / w["wall_seconds"] / (d["rps"] / 1000)
            if "rss_kib_client" in w:
                metrics[f"{key}_rss_mb"] = (w["rss_kib_client"] + w["rss_kib_server"]) / 1024

    text = read(os.path.join(rdir, peer, "tcp.json"))
    if text is not None:
        note_exit("tcp")
        try:
            d = parse_iperf3(text)
        except ValueError:
            d = {"error": "iperf3 printed no JSON"}
        detail["tcp"] = d
        if d.get("error"):
            problems.append(f"tcp: {d['error']}")
        if "gbps" in d:
            metrics["tcp_gbps"] = d["gbps"]
            cpu = cpu_seconds("tcp")
            if cpu is not None and d.get("bytes"):
                d["sidecar_cpu_seconds"] = cpu
                metrics["tcp_cpu_s_per_gb"] = cpu / (d["bytes"] / 1e9)

    text = read(os.path.join(rdir, peer, "idle.json"))
    if text:
        note_exit("idle")
        try:
            d = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            d = {}
        detail["idle"] = d
        if d.get("alive") == d.get("conns") and d.get("conns"):
            metrics["idle_kib_per_conn"] = (d["rss_after_kib"] - d["rss_before_kib"]) / d["conns"]
        elif d:
            problems.append(f"idle: only {d.get('alive')} of {d.get('conns')} connections stayed up "
                            f"({d.get('errors')} failed)")
    start = m.get("start", {})
    if "rss_kib_client" in start:
        metrics["start_rss_mb"] = max(start["rss_kib_client"], start["rss_kib_server"]) / 1024
    ncpu = float(env.get("nproc") or 1)
    for wl, w in m.items():
        if "machine_busy_ticks" in w and w.get("wall_seconds"):
            # CPU used by processes that are not part of the benchmark
            # (a concurrent build, say), as a share of the whole machine.
            other = (w["machine_busy_ticks"] - w["own_ticks"]) / tck / (w["wall_seconds"] * ncpu)
            detail.setdefault(wl, {})["other_cpu_share"] = round(other, 3)
            if other > OTHER_LOAD_LIMIT:
                problems.append(f"{wl}: other processes used {other:.0%} of the machine meanwhile; "
                                f"the figures are unreliable, run again on a quiet machine")
        if "cpu_ticks_client" in w:
            total = w["cpu_ticks_client"] + w["cpu_ticks_server"]
            detail.setdefault(wl, {})["cpu_seconds"] = {
                "client": w["cpu_ticks_client"] / tck, "server": w["cpu_ticks_server"] / tck}
            if "cpu_ticks_sys" in w and total:
                detail[wl]["kernel_share_of_sidecar_cpu"] = round(w["cpu_ticks_sys"] / total, 3)
        counts = parse_perf_counts(read(os.path.join(rdir, peer, f"{wl}.{OUTPUT_EXT.get(wl, 'txt')}.counts")))
        requests = detail.get(wl, {}).get("requests")
        if counts and requests:
            detail[wl]["syscalls_per_request"] = round(counts["syscalls"] / requests, 2)
            detail[wl]["context_switches_per_request"] = round(counts["context_switches"] / requests, 3)
        elif counts and detail.get(wl, {}).get("bytes"):
            mib = detail[wl]["bytes"] / 2**20
            detail[wl]["syscalls_per_mib"] = round(counts["syscalls"] / mib, 1)
            detail[wl]["context_switches_per_mib"] = round(counts["context_switches"] / mib, 2)
    return detail, metrics, problems


def add_latency_over_direct(round_metrics, rates):
    """Fixed-rate percentiles made added over direct's in the same round
    (direct keeps its own: what the others add to)."""
    direct_own = dict(round_metrics.get("direct", {}))
    for peer, metrics in round_metrics.items():
        for rate in rates:
            for proto in PROTOS:
                for name, _ in PERCENTILES:
                    own_key = f"rate_{proto}_{rate}_{name}_ms"
                    own = metrics.pop(own_key, None)
                    base = direct_own.get(own_key)
                    if own is None:
                        continue
                    if peer == "direct":
                        metrics[f"rate_{proto}_{rate}_{name}_added_ms"] = own
                    elif base is not None:
                        metrics[f"rate_{proto}_{rate}_{name}_added_ms"] = own - base


def reference_of(peer, peers, env):
    """Whom a peer's ratio (h× or z×) is taken against."""
    reference = env.get("reference") or "haproxy"
    keys = {p["key"] for p in peers}
    if reference == "haproxy" and peer.endswith("-w2") and "haproxy-w2" in keys:
        return "haproxy-w2"
    return reference


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e5:
        return f"{v / 1e3:.0f}k"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def spread(s, f=fmt):
    return f"{f(s['min'])}–{f(s['max'])}"


def ratio(v, ref, added=False):
    """v / ref; none for an added latency the reference did not add (noise
    can make it zero or negative, and a ratio to that means nothing)."""
    if v is None or ref is None or ref == 0 or (added and ref <= 0):
        return None
    return v / ref


def check(op, value, bound):
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    env, peers = load_env(args.raw)
    if not peers:
        sys.exit(f"{args.raw}: no peers.tsv; run bench/e2e/run.sh first")
    rates = (env.get("rates") or "").split()
    metrics_table = metric_list(rates)
    rounds = round_dirs(args.raw)

    # Per round: every peer's metrics, then latency made relative to direct.
    per_round, details, problems = [], {p["key"]: [] for p in peers}, {}
    for n, rdir in enumerate(rounds, 1):
        measure = load_measure(rdir)
        round_metrics = {}
        for p in peers:
            detail, metrics, probs = collect(rdir, env, p["key"], measure)
            details[p["key"]].append(detail)
            round_metrics[p["key"]] = metrics
            for pr in probs:
                problems.setdefault(p["key"], []).append(f"round {n}: {pr}" if len(rounds) > 1 else pr)
        add_latency_over_direct(round_metrics, rates)
        per_round.append(round_metrics)

    results = {}
    for p in peers:
        key, ref = p["key"], reference_of(p["key"], peers, env)
        r = {"label": p["label"], "reference": ref, "metrics": {}, "ratios": {}, "detail": details[key]}
        for mkey, *_ in metrics_table:
            s = summary([rm.get(key, {}).get(mkey) for rm in per_round])
            if s is None:
                continue
            r["metrics"][mkey] = s
            ratios = {}
            for name, other in (("vs_reference", ref), ("vs_direct", "direct")):
                if other == key or (key == "direct" and mkey.endswith("_added_ms")):
                    continue
                rs = summary([ratio(rm.get(key, {}).get(mkey), rm.get(other, {}).get(mkey),
                                    added=mkey.endswith("_added_ms")) for rm in per_round])
                if rs is not None and not (name == "vs_direct" and mkey.endswith("_added_ms")):
                    ratios[name] = rs
            r["ratios"][mkey] = ratios
        results[key] = r

    if "direct" in results:
        for mkey in STEADY_METRICS:
            s = results["direct"]["metrics"].get(mkey)
            if s and s["min"] > 0 and s["max"] / s["min"] > STEADY_LIMIT:
                problems.setdefault("direct", []).append(
                    f"{mkey}: direct's rounds ran from {fmt(s['min'])} to {fmt(s['max'])} "
                    f"({s['max'] / s['min']:.2f}×, over {STEADY_LIMIT}×): the machine changed speed "
                    f"during the run; its medians mix two machines, run again")

    several = len(rounds) > 1
    reference = env.get("reference") or "haproxy"
    mark = f"{reference[0]}×"
    cells = []
    for mkey, label, unit, _ in metrics_table:
        row = [f"{label} [{unit}]"]
        any_value = False
        for p in peers:
            s = results[p["key"]]["metrics"].get(mkey)
            if s is None:
                row.append("-")
                continue
            any_value = True
            cell = fmt(s["median"]) + (f" ({spread(s)})" if several else "")
            ratios = results[p["key"]]["ratios"].get(mkey, {})
            h, d = ratios.get("vs_reference"), ratios.get("vs_direct")
            if h is not None:
                cell += f"  {mark}{h['median']:.2f}" + (f" ({spread(h, lambda v: f'{v:.2f}')})" if several else "")
            if d is not None:
                cell += f"  d×{d['median']:.2f}"
            row.append(cell)
        if any_value:
            cells.append(row)
    header = ["metric"] + [p["label"] for p in peers]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    rounds_said = f"{len(rounds)} round{'s' if several else ''}"
    appid_said = f"appid {env.get('appid', '?')} ({env.get('appid_build', 'build not recorded')})"
    if env.get("topology") == "mesh":
        print(f"{appid_said}, ztunnel {env.get('ztunnel', 'not run')}; {env.get('nproc', '?')} CPUs "
              f"({env.get('cpu_model', '?')}); mesh: two network namespaces joined by a veth, iptables capture, "
              f"{env.get('workers', '?')} worker threads per proxy, every process on every CPU; "
              f"{env.get('seconds', '?')} s per workload, {rounds_said}")
        print(f"{mark} = ratio to {reference}, d× = ratio to direct (value / reference in the same round: > 1 is more)" +
              ("; median of the rounds (min–max)" if several else ""))
    else:
        print(f"{appid_said}, haproxy {env.get('haproxy', '?')}, nginx {env.get('nginx', '?')}, "
              f"OpenSSL {env.get('openssl', '?')}; {env.get('nproc', '?')} CPUs ({env.get('cpu_model', '?')}), "
              f"sidecars on CPU {env.get('proxy_cpu', '?')} (two-worker peers: every CPU), load generator + backend "
              f"on CPU {env.get('load_cpu', '?')}; {env.get('seconds', '?')} s per workload, {rounds_said}")
        if env.get("rates"):
            print(f"fixed rates: {RATE_LAYOUTS.get(env.get('rate_layout'), 'the same cores')}; "
                  f"{RATE_ARRIVALS.get(env.get('rate_arrivals'), 'h2load --rps')}")
        resumption = "on" if env.get("peer_resumption") == "1" else "off"
        print(f"TLS 1.3, ECDSA P-256, X25519, AES-256-GCM; session resumption: haproxy/nginx {resumption}, "
              f"appid off (its sidecars never resume: every connection verifies the current certificate)")
        print(f"{mark} = ratio to {reference} (two-worker peers: to haproxy with 2 threads), d× = ratio to direct "
              "(value / reference in the same round: > 1 is more)" +
              ("; median of the rounds (min–max)" if several else ""))
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print(line(r))

    targets = []
    mesh = env.get("topology") == "mesh"
    for mkey, peer, kind, op, bound, what in TARGETS_MESH if mesh else TARGETS_LOOPBACK:
        if peer not in results:
            continue
        if kind == "ratio":
            s = results[peer]["ratios"].get(mkey, {}).get("vs_reference")
        else:
            s = results[peer]["metrics"].get(mkey)
        if s is None:
            continue
        targets.append({"target": what, "metric": mkey, "peer": peer, "kind": kind, "op": op, "bound": bound,
                        "median": s["median"], "min": s["min"], "max": s["max"],
                        "met": check(op, s["median"], bound)})
    if targets:
        print()
        print(f"Issue {19 if mesh else 17} targets (median of the rounds):")
        for t in targets:
            unit = "×" if t["kind"] == "ratio" else ""
            got = f"{fmt(t['median'])}{unit}" + (f" ({fmt(t['min'])}–{fmt(t['max'])})" if several else "")
            print(f"  {'met    ' if t['met'] else 'NOT MET'}  {t['target']}: {got}")

    notes = []
    for p in peers:
        for wl, d in (details[p["key"]][-1] if details[p["key"]] else {}).items():
            if "audit_bytes_per_request" in d:
                notes.append(f"{p['label']}, {wl}: {d['audit_lines_per_request']:.2f} audit lines, "
                             f"{d['audit_bytes_per_request']:.0f} bytes of audit log per request (both sidecars)")
    for p in peers:
        # BENCH_SYSCALLS=1 figures and the kernel's share, of the last round.
        parts = []
        for wl, d in (details[p["key"]][-1] if details[p["key"]] else {}).items():
            bits = []
            if "syscalls_per_request" in d:
                bits.append(f"{d['syscalls_per_request']:.1f} syscalls, "
                            f"{d['context_switches_per_request']:.2f} context switches per request")
            if "syscalls_per_mib" in d:
                bits.append(f"{d['syscalls_per_mib']:.0f} syscalls, "
                            f"{d['context_switches_per_mib']:.1f} context switches per MiB")
            if "kernel_share_of_sidecar_cpu" in d:
                bits.append(f"kernel {d['kernel_share_of_sidecar_cpu']:.0%} of CPU")
            if bits:
                parts.append(f"{wl}: " + ", ".join(bits))
        if parts:
            notes.append(f"{p['label']} (both sidecars): " + "; ".join(parts))
    for peer, probs in problems.items():
        for pr in probs:
            notes.append(f"PROBLEM {results[peer]['label']}: {pr}")
    if notes:
        print()
        for n in notes:
            print(n)

    if args.json:
        doc = {
            "env": env,
            "rounds": len(rounds),
            "metrics": [{"key": k, "label": l.strip(), "unit": u, "better": b} for k, l, u, b in metrics_table],
            "peers": [p["key"] for p in peers],
            "results": results,
            "targets": targets,
            "problems": problems,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
