#!/usr/bin/env python3
"""Memory per idle connection, for bench/e2e/run.sh.

Reads the RSS of the given processes (and their children), opens N
connections to HOST:PORT (127.0.0.1 unless --host says otherwise), sends
one HTTP/1.1 keep-alive GET on each and reads its response (so every
connection is established end to end: load generator -> client sidecar ->
mTLS -> server sidecar -> backend), waits for the processes to settle,
reads the RSS again, prints one JSON object, and closes everything.
Python 3 standard library only.

    idle.py [--host 10.79.0.2] --port 20080 --conns 1000 --settle 2 PID [PID...]
"""

import argparse
import json
import os
import socket
import sys
import time


def tree(pid):
    """pid and its descendants (nginx: master and worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == p:
                todo.append(int(entry))
    return out


def rss_kib(pids):
    total = 0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk
    return status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("pids", type=int, nargs="*")
    args = ap.parse_args()

    before = [rss_kib([p]) for p in args.pids]
    socks, errors, statuses = [], 0, {}
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    started = time.monotonic()
    for _ in range(args.conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect((args.host, args.port))
            s.sendall(request)
            status = read_response(s).decode(errors="replace")
            statuses[status] = statuses.get(status, 0) + 1
            socks.append(s)
        except (OSError, ConnectionError) as e:
            errors += 1
            if errors <= 3:
                print(f"idle.py: connection failed: {e}", file=sys.stderr)
            s.close()
    opened = time.monotonic() - started
    time.sleep(args.settle)
    # A connection the far side closed meanwhile reads EOF: count the live ones.
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) else 0
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    after = [rss_kib([p]) for p in args.pids]
    print(json.dumps({
        "conns": args.conns,
        "established": len(socks),
        "alive": alive,
        "errors": errors,
        "statuses": statuses,
        "open_seconds": round(opened, 3),
        "rss_before_kib": sum(before),
        "rss_after_kib": sum(after),
        # Per process, in the order given (run.sh: client sidecar, server).
        "rss_before_kib_each": before,
        "rss_after_kib_each": after,
    }))
    for s in socks:
        s.close()
    return 0 if errors == 0 and alive == args.conns else 1


if __name__ == "__main__":
    sys.exit(main())
