"""A gRPC client (real grpcio) for tests/grpc_clients.rs.

Usage: client.py <host:port> <scenario> [count]. Runs one scenario against
the `appid.test.Grpc` service of tests/grpc/server.py (through whatever is
listening at host:port) and prints what it observed as one JSON object on
stdout; the Rust test makes the assertions. Status codes are reported by
name (`OK`, `CANCELLED`, ...).

Scenarios:
- unary, server_stream, client_stream, bidi: one call each.
- early_finish [n]: n client-streaming calls whose server answers after
  the first message while the client still has 4 MiB to send.
- fresh_channels [n]: n unary calls, each on a new channel (and so a new
  connection), 16 at a time.
- deadline: a call that takes longer than its 300 ms deadline; also reports
  after how many milliseconds the server saw the cancellation (the
  RST_STREAM the client sends at its deadline), or null if it never did.
- status: a call that fails with details and trailing metadata.
- denied: a call the sidecar's policy denies.
"""

import collections
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "/appid.test.Grpc/"
# Fresh connections only: no subchannel shared between channels.
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
TIMEOUT = 30


def code_of(error):
    return error.code().name


def unary(channel):
    reply = channel.unary_unary(SERVICE + "Unary")(b"hello", timeout=TIMEOUT)
    return {"code": "OK", "reply": reply.decode()}


def server_stream(channel):
    replies = channel.unary_stream(SERVICE + "ServerStream")(b"5", timeout=TIMEOUT)
    return {"code": "OK", "replies": [r.decode() for r in replies]}


def client_stream(channel):
    messages = iter([b"m%d" % i for i in range(10)])
    reply = channel.stream_unary(SERVICE + "ClientStream")(messages, timeout=TIMEOUT)
    return {"code": "OK", "reply": reply.decode()}


def bidi(channel):
    messages = iter([b"b%d" % i for i in range(5)])
    replies = channel.stream_stream(SERVICE + "Bidi")(messages, timeout=TIMEOUT)
    return {"code": "OK", "replies": [r.decode() for r in replies]}


def deadline(channel):
    try:
        channel.unary_unary(SERVICE + "Slow")(b"late", timeout=0.3)
        code = "OK"
    except grpc.RpcError as error:
        code = code_of(error)
    seen = []
    waited = time.monotonic()
    while not seen and time.monotonic() - waited < 3:
        reply = channel.unary_unary(SERVICE + "Cancellations")(b"", timeout=TIMEOUT)
        seen = json.loads(reply.decode())
        time.sleep(0.05)
    return {"code": code, "server_cancelled_after_ms": seen[0] if seen else None}


def status(channel):
    call = channel.unary_unary(SERVICE + "Status")
    try:
        call(b"x", timeout=TIMEOUT)
    except grpc.RpcError as error:
        return {
            "code": code_of(error),
            "details": error.details(),
            "trailing": {k: v for k, v in error.trailing_metadata() or ()},
        }
    return {"code": "OK"}


def denied(channel):
    channel.unary_unary(SERVICE + "Admin")(b"x", timeout=TIMEOUT)
    return {"code": "OK"}


def early_finish_call(channel):
    # 256 messages of 16 KiB: far more than the server reads.
    messages = (b"u" * 16384 for _ in range(256))
    reply = channel.stream_unary(SERVICE + "EarlyFinish")(messages, timeout=TIMEOUT)
    if reply != b"early":
        raise ValueError("unexpected reply %r" % reply)


def fresh_channel_call(target):
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        reply = channel.unary_unary(SERVICE + "Unary")(b"fresh", timeout=TIMEOUT)
    if reply != b"fresh":
        raise ValueError("unexpected reply %r" % reply)


def many(calls, call, workers):
    """Runs `calls` calls of `call()`; counts the failures by status."""
    errors = collections.Counter()
    examples = {}

    def one(_):
        try:
            call()
            return None
        except grpc.RpcError as error:
            return code_of(error), "%s: %s" % (code_of(error), error.details())
        except Exception as error:  # a wrong reply
            return "WRONG_REPLY", str(error)

    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for failure in pool.map(one, range(calls)):
            if failure:
                errors[failure[0]] += 1
                examples.setdefault(failure[0], failure[1])
    return {"calls": calls, "errors": dict(errors), "examples": examples}


def main():
    target, scenario = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    single = {
        "unary": unary,
        "server_stream": server_stream,
        "client_stream": client_stream,
        "bidi": bidi,
        "deadline": deadline,
        "status": status,
        "denied": denied,
    }
    if scenario in single:
        with grpc.insecure_channel(target, options=OPTIONS) as channel:
            try:
                result = single[scenario](channel)
            except grpc.RpcError as error:
                result = {"code": code_of(error), "details": error.details()}
    elif scenario == "early_finish":
        with grpc.insecure_channel(target, options=OPTIONS) as channel:
            result = many(count, lambda: early_finish_call(channel), 4)
    elif scenario == "fresh_channels":
        result = many(count, lambda: fresh_channel_call(target), 16)
    else:
        sys.exit("unknown scenario %r" % scenario)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
