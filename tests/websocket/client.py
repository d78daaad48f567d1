"""A WebSocket client (Python `websockets`): connects to ws://ADDRESS/echo,
sends a text message, a 4 MiB binary message and 100 small ones, checks
every echo, closes cleanly, and prints `ok`. Used by tests/protocols.rs."""
import asyncio
import os
import sys

import websockets


async def main(address):
    async with websockets.connect(f"ws://{address}/echo", max_size=None) as socket:
        await socket.send("hello")
        assert await socket.recv() == "hello"
        big = os.urandom(4 * 1024 * 1024)
        await socket.send(big)
        assert await socket.recv() == big
        for i in range(100):
            await socket.send(f"message {i}")
        for i in range(100):
            assert await socket.recv() == f"message {i}"
    print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
