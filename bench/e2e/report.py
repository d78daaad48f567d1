#!/usr/bin/env python3
"""Table and JSON for bench/e2e/run.sh (Python 3 standard library only).

    report.py RAW_DIR [--json OUT.json]

RAW_DIR holds what run.sh wrote: env.txt (key=value), peers.tsv (key,
label, in run order), measure.tsv (peer, workload, key, value: exit codes,
CPU clock ticks of both sidecars, audit log volume) and, per peer, the
tools' own output: h1.txt / h1close.txt (wrk --latency), h2.txt (h2load),
tcp.json (iperf3 -J), idle.json (idle.py).

Every figure is printed with its ratio to haproxy (h×) and to direct (d×):
peer value / reference value, so > 1 is more of it (better for req/s and
Gbit/s; worse for latency, CPU and memory).
"""

import argparse
import json
import os
import re
import sys

# key, row label, unit, which way is better
METRICS = [
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
]

# Above this share of the machine used by other processes during a workload,
# its figures are flagged.
OTHER_LOAD_LIMIT = 0.10

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


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


def load(raw):
    env = {}
    for line in (read(os.path.join(raw, "env.txt")) or "").splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    peers = []
    for line in (read(os.path.join(raw, "peers.tsv")) or "").splitlines():
        if line.strip():
            key, label = line.split("\t", 1)
            peers.append({"key": key, "label": label})
    measure = {}
    for line in (read(os.path.join(raw, "measure.tsv")) or "").splitlines():
        if line.strip():
            peer, wl, k, v = line.split("\t")
            measure.setdefault(peer, {}).setdefault(wl, {})[k] = float(v)
    return env, peers, measure


def collect(raw, env, peer, measure):
    """Per-workload detail and the flat metrics of one peer."""
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
        text = read(os.path.join(raw, peer, f"{wl}.{ext}"))
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

    text = read(os.path.join(raw, peer, "tcp.json"))
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

    text = read(os.path.join(raw, peer, "idle.json"))
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
            detail.setdefault(wl, {})["cpu_seconds"] = {
                "client": w["cpu_ticks_client"] / tck, "server": w["cpu_ticks_server"] / tck}
    return detail, metrics, problems


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


def ratio(v, ref):
    if v is None or ref is None or ref == 0:
        return None
    return v / ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    env, peers, measure = load(args.raw)
    if not peers:
        sys.exit(f"{args.raw}: no peers.tsv; run bench/e2e/run.sh first")
    results, problems = {}, {}
    for p in peers:
        detail, metrics, probs = collect(args.raw, env, p["key"], measure)
        results[p["key"]] = {"label": p["label"], "metrics": metrics, "detail": detail}
        if probs:
            problems[p["key"]] = probs

    def value(peer, key):
        return results.get(peer, {}).get("metrics", {}).get(key)

    for p in peers:
        r = results[p["key"]]
        r["ratios"] = {}
        for key, *_ in METRICS:
            v = value(p["key"], key)
            if v is not None:
                r["ratios"][key] = {"vs_haproxy": ratio(v, value("haproxy", key)),
                                    "vs_direct": ratio(v, value("direct", key))}

    # The table: one row per metric, one column per peer; each cell is
    # "value h×ratio d×ratio".
    cells = []
    for key, label, unit, _ in METRICS:
        row = [f"{label} [{unit}]"]
        any_value = False
        for p in peers:
            v = value(p["key"], key)
            any_value |= v is not None
            if v is None:
                row.append("-")
                continue
            h, d = ratio(v, value("haproxy", key)), ratio(v, value("direct", key))
            cell = fmt(v)
            if h is not None and p["key"] != "haproxy":
                cell += f"  h×{h:.2f}"
            if d is not None and p["key"] != "direct":
                cell += f"  d×{d:.2f}"
            row.append(cell)
        if any_value:
            cells.append(row)
    header = ["metric"] + [p["label"] for p in peers]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    print(f"appid {env.get('appid', '?')}, haproxy {env.get('haproxy', '?')}, nginx {env.get('nginx', '?')}, "
          f"OpenSSL {env.get('openssl', '?')}; {env.get('nproc', '?')} CPUs ({env.get('cpu_model', '?')}), "
          f"sidecars on CPU {env.get('proxy_cpu', '?')}, load generator + backend on CPU {env.get('load_cpu', '?')}; "
          f"{env.get('seconds', '?')} s per workload")
    resumption = "on" if env.get("peer_resumption") == "1" else "off"
    print(f"TLS 1.3, ECDSA P-256, X25519, AES-256-GCM; session resumption: haproxy/nginx {resumption}, "
          f"appid off (its sidecars never resume: every connection verifies the current certificate)")
    print("h× = ratio to haproxy, d× = ratio to direct (value / reference: > 1 is more)")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print(line(r))
    notes = []
    for p in peers:
        for wl, d in results[p["key"]]["detail"].items():
            if "audit_bytes_per_request" in d:
                notes.append(f"{p['label']}, {wl}: {d['audit_lines_per_request']:.2f} audit lines, "
                             f"{d['audit_bytes_per_request']:.0f} bytes of audit log per request (both sidecars)")
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
            "metrics": [{"key": k, "label": l.strip(), "unit": u, "better": b} for k, l, u, b in METRICS],
            "peers": [p["key"] for p in peers],
            "results": results,
            "problems": problems,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
