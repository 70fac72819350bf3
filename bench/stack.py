"""The stack the bench measures: preparing it before the sections run (file limit, the bench's
own database and Redis db, Django, the small fixtures sections 1, 2 and 4 use) and reading it
while they run (HTTP GETs, the gateway API's request counters, established sockets).
"""

from __future__ import annotations

import http.client
import os
import resource
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from bench.env import PYTHON, REPO, VAR, Config
from bench.procs import BenchError


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child: uvicorn, the long-poll client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(wanted, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            return target
        except (ValueError, OSError):
            continue
    return soft


def prepare_database(config: Config) -> float:
    """Drop and re-create the bench's own database, then migrate it; seconds taken."""
    import psycopg

    name = config.database_name
    if "bench" not in name:
        raise BenchError(f"BENCH_DATABASE_URL names {name!r}: the bench drops and re-creates its "
                         "database, so its name must contain 'bench'.")
    url = urlparse(config.database_url)
    maintenance = url._replace(path="/postgres").geturl().replace("postgres://", "postgresql://",
                                                                  1)
    started = time.monotonic()
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL at {url.hostname}:{url.port} is not reachable "
                         f"({exc}); set BENCH_DATABASE_URL.") from None
    done = subprocess.run(  # noqa: S603 - fixed argv built here, no shell
        [PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO,
        env=config.child_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def redis_client(config: Config):
    import redis

    return redis.Redis.from_url(config.redis_url)


def flush_redis(config: Config) -> None:
    db = urlparse(config.redis_url).path.lstrip("/") or "0"
    if db == "0":
        raise BenchError("BENCH_REDIS_URL must name a Redis database of its own (not 0): the "
                         "bench flushes it.")
    try:
        redis_client(config).flushdb()
    except Exception as exc:
        raise BenchError(f"Redis at {config.redis_url} is not reachable ({exc}); set "
                         "BENCH_REDIS_URL.") from None


def setup_django(config: Config) -> None:
    os.environ.update(config.child_env())
    (VAR / "var" / "static").mkdir(parents=True, exist_ok=True)
    import django

    django.setup()


class Fixtures:
    """The small tenants and gateways sections 1, 2 and 4 use (built through the services)."""

    def __init__(self, config: Config) -> None:
        from bench import fixtures

        self.poll = fixtures.small_tenant("bench-poll").tenant
        self.poll_token = fixtures.gateways_with_tokens(self.poll, 1, "wrk")[0][1]
        self.longpoll = fixtures.gateways_with_tokens(self.poll, config.longpoll_gateways, "lp")
        self.e2e_small = fixtures.small_tenant("bench-e2e")
        self.e2e_gateway, self.e2e_token = fixtures.gateways_with_tokens(
            self.e2e_small.tenant, 1, "e2e")[0]
        self.poll_pointer = fixtures.publish_now(self.poll)
        fixtures.publish_now(self.e2e_small.tenant)

    def bundle_bytes(self) -> bytes:
        from bundles import store

        content = store.load(self.poll_pointer["sha256"])
        assert content is not None  # noqa: S101 - published by __init__
        return content


def rate_count(config: Config, gateway_ids: list[int]) -> int:
    """Requests the gateway API has counted for these gateways (its per-minute counters):
    server-side proof that a request was authenticated."""
    wanted = {str(g) for g in gateway_ids}
    client = redis_client(config)
    total = 0
    keys = [k for k in client.scan_iter(match="tollgate:gw:rl:*", count=1000)
            if k.decode().split(":")[3] in wanted]
    for value in client.mget(keys) if keys else []:
        total += int(value or 0)
    return total


def established(port: int) -> int:
    """Established TCP sockets whose local port is ``port`` (server side, from /proc/net)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def get(url: str, headers: dict[str, str], timeout: float = 10) -> tuple[int, dict, bytes]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.request("GET", parsed.path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def expect(url: str, headers: dict[str, str], status: int, what: str) -> dict:
    got, response_headers, body = get(url, headers)
    if got != status:
        raise BenchError(f"{what}: expected {status} from {url}, got {got}: {body[:300]!r}")
    return response_headers
