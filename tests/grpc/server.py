"""A gRPC server (real grpcio) for tests/grpc_clients.rs.

Generic handlers with bytes in and out (no protoc, no generated code), on
127.0.0.1 at the port given as the first argument (0: any free port). It
prints `PORT <n>` once it listens, then serves until killed.

Service `appid.test.Grpc`:
- `Unary`: echoes the request.
- `ServerStream`: the request is a decimal count n; answers n messages.
- `ClientStream`: answers the number of messages received (decimal).
- `Bidi`: echoes each message as it arrives.
- `EarlyFinish` (client streaming): answers `early` after the FIRST
  message, while the client is still sending.
- `Slow`: answers after two seconds (callers set a shorter deadline);
  when the caller cancels first, records after how many milliseconds the
  cancellation reached it instead.
- `Cancellations`: the milliseconds recorded by `Slow` so far, as JSON.
- `Status`: fails with FAILED_PRECONDITION, details `precondition`, and
  trailing metadata `x-detail: kept`.
- `Admin`: echoes (the test's policy denies it; it must never be called).
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "appid.test.Grpc"


def unary(request, context):
    return request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"message %d" % i


def client_stream(request_iterator, context):
    return str(sum(1 for _ in request_iterator)).encode()


def bidi(request_iterator, context):
    for message in request_iterator:
        yield message


def early_finish(request_iterator, context):
    next(request_iterator)
    return b"early"


CANCELLATIONS = []
CANCELLATIONS_LOCK = threading.Lock()


def slow(request, context):
    started = time.monotonic()
    ended = threading.Event()
    context.add_callback(ended.set)  # runs when the call ends, cancelled or not
    if ended.wait(2):  # ended before we answered: the caller cancelled
        with CANCELLATIONS_LOCK:
            CANCELLATIONS.append(round((time.monotonic() - started) * 1000))
    return request


def cancellations(request, context):
    with CANCELLATIONS_LOCK:
        return json.dumps(CANCELLATIONS).encode()


def status(request, context):
    context.set_trailing_metadata((("x-detail", "kept"),))
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    context.set_details("precondition")
    return b""


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "EarlyFinish": grpc.stream_unary_rpc_method_handler(early_finish),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Cancellations": grpc.unary_unary_rpc_method_handler(cancellations),
        "Status": grpc.unary_unary_rpc_method_handler(status),
        "Admin": grpc.unary_unary_rpc_method_handler(unary),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("PORT %d" % bound, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
