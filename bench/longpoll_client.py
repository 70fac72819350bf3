"""N concurrent bundle long polls from one process (raw asyncio streams; no Django).

``python -m bench.longpoll_client SPEC.json RESULT.json``. Each of the N clients behaves like a
gateway: ``GET bundles/<slug>`` with ``If-None-Match: <etag>`` and ``Prefer: wait=<s>``; a 304
(the wait ran out) is polled again at once, an error (5xx, a dropped connection) after
``retry_delay`` seconds, until the answer is a 200 with another ETag. When that arrived is
recorded with ``time.monotonic()`` (one clock for every process on Linux), and so is every error
(before or after the publish, the orchestrator can tell by the time).

Clients are started as the orchestrator allows (``ALLOW <count>`` lines on stdin: it paces
them by what the server has authenticated). Every half second it prints ``INFLIGHT <requests
waiting for an answer> <errors so far> <clients done>``; ``DONE`` once every client is done (or
the deadline passed) and RESULT.json is written.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import threading
import time
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.inflight = 0
        self.errors: list[dict[str, Any]] = []
        self.done: list[dict[str, Any]] = []
        self.polls = 0


async def _request(spec: dict[str, Any], token: str, opened: asyncio.Semaphore,
                   stats: Stats, connection: list) -> tuple[int, dict[str, str]]:
    request = (
        f"GET {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
        f"Authorization: Bearer {token}\r\nIf-None-Match: {spec['etag']}\r\n"
        f"Prefer: wait={spec['wait']}\r\nUser-Agent: tollgate-bench\r\n\r\n"
    ).encode()
    if not connection:
        async with opened:  # a bounded number of connects at a time: the backlog is finite
            connection[:] = await asyncio.open_connection(spec["host"], spec["port"])
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    stats.polls += 1
    stats.inflight += 1
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        stats.inflight -= 1
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif length := int(headers.get("content-length", "0")):
        await reader.readexactly(length)
    if headers.get("connection", "").lower() == "close":
        writer.close()
        connection.clear()
    return status, headers


async def _client(spec: dict[str, Any], token: str, opened: asyncio.Semaphore,
                  stats: Stats) -> None:
    connection: list = []
    while True:
        try:
            status, headers = await _request(spec, token, opened, stats, connection)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            stats.errors.append({"t": time.monotonic(), "error": type(exc).__name__})
            if connection:
                connection[1].close()
                connection.clear()
            await asyncio.sleep(spec["retry_delay"] * (0.5 + random.random()))  # noqa: S311 - retry jitter
            continue
        if status == 200 and headers.get("etag") != spec["etag"]:
            stats.done.append({"t": time.monotonic(), "etag": headers.get("etag"),
                               "revision": headers.get("x-bundle-revision")})
            break
        if status == 304:
            continue
        stats.errors.append({"t": time.monotonic(), "error": str(status)})
        await asyncio.sleep(spec["retry_delay"] * (0.5 + random.random()))  # noqa: S311 - retry jitter
    if connection:
        connection[1].close()


async def _main(spec: dict[str, Any], result_path: str) -> None:
    n = spec["clients"]
    tokens = spec["tokens"]
    opened = asyncio.Semaphore(spec.get("connect_concurrency", 200))
    stats = Stats()
    allowed = [0]
    final = threading.Event()

    def read_permits() -> None:
        for line in sys.stdin:
            if line.startswith("ALLOW"):
                allowed[0] = max(allowed[0], int(line.split()[1]))
            elif line.startswith("FINAL"):
                final.set()

    threading.Thread(target=read_permits, daemon=True).start()
    tasks: list[asyncio.Task] = []
    deadline = time.monotonic() + spec["deadline"]
    last_report = 0.0
    while time.monotonic() < deadline and len(stats.done) < n:
        if final.is_set() and len(stats.done) >= len(tasks):
            break
        while len(tasks) < min(n, allowed[0]) and not final.is_set():
            tasks.append(asyncio.create_task(
                _client(spec, tokens[len(tasks) % len(tokens)], opened, stats)))
        if time.monotonic() - last_report >= 0.5:
            print(f"INFLIGHT {stats.inflight} {len(stats.errors)} {len(stats.done)}",
                  flush=True)
            last_report = time.monotonic()
        await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with open(result_path, "w") as handle:
        json.dump({"done": stats.done, "errors": stats.errors, "polls": stats.polls,
                   "started": len(tasks)}, handle)
    print("DONE", flush=True)


def main() -> None:
    spec_path, result_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as handle:
        spec = json.load(handle)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = spec["clients"] + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    asyncio.run(_main(spec, result_path))


if __name__ == "__main__":
    main()
