"""A WebSocket echo server (Python `websockets`): prints its port, then
echoes every message until killed. Used by tests/protocols.rs."""
import asyncio
import sys

import websockets


async def echo(socket, *_path):
    async for message in socket:
        await socket.send(message)


async def main():
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
