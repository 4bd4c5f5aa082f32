"""A burst of concurrent scrapes from its own process (its CPU time is not the loop's).

    python scrape_burst.py PORT N

Prints ``ready`` once started, waits for a line on stdin (so that the parent
can take its baseline after the fork, which is a long step of its own loop),
then opens N connections at once, sends ``GET /metrics`` on each, reads each answer
to the end (30 s bound) and prints one JSON object: the status of every
scrape (``error: ...`` for a connection that failed) and the distinct 200
bodies, each checked against its Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def scrape(port: int) -> tuple[str, str | None]:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 30.0)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return f"error: {type(exc).__name__}", None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ")[1].decode() if lines[0].startswith(b"HTTP/1.1 ") else "garbage"
    length = next(
        (int(v) for k, _, v in (h.partition(b": ") for h in lines[1:]) if k == b"Content-Length"),
        -1,
    )
    if length != len(body):
        return f"short: {len(body)} of {length} bytes", None
    return status, body.decode() if status == "200" else None


async def main(port: int, n: int) -> None:
    results = await asyncio.gather(*(scrape(port) for _ in range(n)))
    bodies = sorted({body for _, body in results if body is not None})
    print(json.dumps({"statuses": [s for s, _ in results], "bodies": bodies}))


if __name__ == "__main__":
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
