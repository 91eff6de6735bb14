"""W3's backend: a tiny asyncio key-value server on 127.0.0.1, in its own process.

One request per line, `GET <key>`; the answer is one line of JSON, a stored order of
`--items` line items (the same document for every key, its `id` set to the key). The harness
runs it pinned with the load generator, never on the target's CPU. Prints `READY pid=<pid>
port=<port>` (flushed) and exits when its stdin closes, so it never outlives the harness.

Usage: kv_backend.py [--port N] [--items N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys


def order_template(items: int) -> str:
    """The stored document, with a placeholder for its id."""
    document = {
        "id": "@ID@",
        "customer": {"id": 4242, "name": "Ada Lovelace", "tier": "gold", "country": "GB"},
        "currency": "EUR",
        "items": [
            {"sku": f"SKU-{i:05d}", "name": f"Widget {i}", "qty": 1 + i % 4,
             "unit_price": round(3.5 + i * 0.75, 2),
             "tags": ["blue", "large", "promo"][: 1 + i % 3]}
            for i in range(items)
        ],
    }  # fmt: skip
    return json.dumps(document, separators=(",", ":"))


async def serve_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, template: str
) -> None:
    try:
        while line := await reader.readline():
            _, _, key = line.decode().strip().partition(" ")
            writer.write(template.replace("@ID@", key).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int, items: int) -> None:
    template = order_template(items)
    server = await asyncio.start_server(
        lambda r, w: serve_client(r, w, template), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY pid={os.getpid()} port={bound}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the harness goes away
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--items", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.items))
