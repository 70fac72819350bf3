"""What the bench runs against and how big it is: everything from the environment.

The bench owns its database (``BENCH_DATABASE_URL``, dropped and re-created on every run) and its
Redis database (``BENCH_REDIS_URL``, flushed on every run); nothing else is touched.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var" / "bench"
LOGS = VAR / "logs"
PYDEPS = VAR / "pydeps"  # py-spy: kept out of the shared .venv (scripts/bench-deps)
MB = 1024 * 1024
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else "python3"


def say(text: str = "") -> None:
    print(text, flush=True)


def env_int(name: str, default: int) -> int:
    """An integer setting of the bench from the environment (a clear exit when malformed)."""
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}: expected an integer, got {raw!r}") from None


@dataclass
class Config:
    quick: bool
    database_url: str
    redis_url: str
    host: str
    port: int
    nginx_port: int
    sections: set[str]
    wrk_threads: int
    wrk_connections: int
    wrk_seconds: int
    wrk_warmup: int
    worker_counts: list[int]
    profile: bool
    longpoll_clients: int
    longpoll_gateways: int
    longpoll_wait: int
    compile_scales: list[float]
    e2e_iterations: int
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))
    fernet_key: str = ""

    @property
    def database_name(self) -> str:
        return urlparse(self.database_url).path.lstrip("/")

    @classmethod
    def from_env(cls) -> Config:
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")
        sections = set(os.environ.get("BENCH_SECTIONS", "1,2,3,4,5").replace(" ", "").split(","))
        scales = os.environ.get("BENCH_COMPILE_SCALES", "0.01,0.1" if quick else "0.01,0.1,1")
        workers = os.environ.get("BENCH_WORKERS", "1,2")
        from cryptography.fernet import Fernet

        return cls(
            quick=quick,
            database_url=os.environ.get(
                "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate_bench"),
            redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
            host="127.0.0.1",
            port=env_int("BENCH_PORT", 18080),
            nginx_port=env_int("BENCH_NGINX_PORT", 18081),
            sections=sections,
            wrk_threads=env_int("BENCH_WRK_THREADS", 2),
            wrk_connections=env_int("BENCH_WRK_CONNECTIONS", 64),
            wrk_seconds=env_int("BENCH_WRK_SECONDS", 3 if quick else 10),
            wrk_warmup=env_int("BENCH_WRK_WARMUP", 1 if quick else 3),
            worker_counts=[int(w) for w in workers.split(",") if w.strip()],
            # py-spy on the server during section 1: on by default in a full run.
            profile=os.environ.get("BENCH_PROFILE", "0" if quick else "1") not in ("", "0"),
            longpoll_clients=env_int("BENCH_LONGPOLL_CLIENTS", 1000 if quick else 10_000),
            longpoll_gateways=env_int("BENCH_LONGPOLL_GATEWAYS", 50),
            longpoll_wait=env_int("BENCH_LONGPOLL_WAIT", 60),
            compile_scales=[float(s) for s in scales.split(",") if s.strip()],
            e2e_iterations=env_int("BENCH_E2E_ITERATIONS", 5 if quick else 30),
            fernet_key=Fernet.generate_key().decode(),
        )

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of every process the bench starts: production-like settings."""
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "DEBUG": "false",
            "SECRET_KEY": self.secret_key,
            "SECRET_ENCRYPTION_KEYS": self.fernet_key,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # DEBUG off refuses a loopback public URL; it names bundles' `iss`, never dialled.
            "TOLLGATE_BASE_URL": "https://tollgate.bench.example",
            "SECURE_SSL_REDIRECT": "false",
            "TOLLGATE_VAR_DIR": str(VAR / "var"),
            # One gateway token drives tens of thousands of requests a second here.
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000000",
            "DJANGO_SETTINGS_MODULE": "governance.settings",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("CELERY_TASK_ALWAYS_EAGER", None)
        env.update(extra)
        return env

    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (q in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    return quantile(values, 0.5)


