"""The server stack's memory while the mixed load runs (section 6, bench/mixed.py): RSS of
every process of the stack sampled from /proc (psutil is not installed), the connections to the
bench database, and the verdict on growth (a least-squares slope over the run's second half).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.env import MB


class MemorySampler:
    """RSS of every process of the server stack (uvicorn supervisor + workers, Celery worker +
    pool) every ``interval`` seconds, from /proc (psutil is not installed)."""

    def __init__(self, roots: dict[str, int], interval: float = 2.0,
                 database_url: str = "", database: str = "") -> None:
        self.roots = roots
        self.database_url, self.database = database_url, database
        self._pg = None
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pg is not None:
            self._pg.close()

    def sample(self) -> dict[str, Any]:
        from bench.procs import tree_rss

        by_process: dict[str, float] = {}
        for name, pid in self.roots.items():
            for p, rss in tree_rss(pid).items():
                by_process[f"{name}:{p}" if p != pid else f"{name}:{p} (parent)"] = rss / MB
        return {"t": time.monotonic() - self.t0, "total_mb": sum(by_process.values()),
                "by_process_mb": by_process, "pg_connections": self._pg_connections()}

    def _pg_connections(self) -> int | None:
        """Connections to the bench database now (pg_stat_activity), from a connection of its
        own (counted, and subtracted)."""
        if not self.database_url:
            return None
        try:
            import psycopg

            if self._pg is None:
                self._pg = psycopg.connect(self.database_url.replace(
                    "postgres://", "postgresql://", 1), autocommit=True, connect_timeout=5)
            row = self._pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                   (self.database,)).fetchone()
            return int(row[0]) - 1
        except Exception:
            self._pg = None
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    if not den:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / den * 60


# Below this, the second half of the run is still warm-up (caches, connection pools, the first
# compile of every template): the verdict is printed but not part of the section's pass/fail.
SHORT_RUN_SECONDS = 120


def memory_verdict(samples: list[dict[str, Any]], load_seconds: float) -> dict[str, Any]:
    """Start, end, max and the slope over the second half of the load phase. Rule: "growing"
    when that slope exceeds max(2 MB/min, 0.5 % of the mean RSS per minute); else "stable"."""
    loaded = [s for s in samples if s["t"] <= load_seconds + 1]
    half = [(s["t"], s["total_mb"]) for s in loaded if s["t"] >= load_seconds / 2]
    slope = slope_mb_per_min(half)
    # Not part of the rule, printed to tell a step from a sustained climb.
    last_third = slope_mb_per_min([(s["t"], s["total_mb"]) for s in loaded
                                   if s["t"] >= 2 * load_seconds / 3])
    mean = sum(v for _, v in half) / len(half) if half else 0.0
    limit = max(2.0, 0.005 * mean)
    per_process: dict[str, dict[str, float | None]] = {}
    for key in (loaded[-1]["by_process_mb"] if loaded else {}):
        series = [(s["t"], s["by_process_mb"][key]) for s in loaded
                  if key in s["by_process_mb"] and s["t"] >= load_seconds / 2]
        first = next((s["by_process_mb"][key] for s in loaded if key in s["by_process_mb"]),
                     None)
        per_process[key] = {"start_mb": first, "end_mb": loaded[-1]["by_process_mb"][key],
                            "slope_second_half_mb_per_min": slope_mb_per_min(series)}
    short = load_seconds < SHORT_RUN_SECONDS
    return {
        "short_run": short,
        "start_mb": loaded[0]["total_mb"] if loaded else None,
        "end_mb": loaded[-1]["total_mb"] if loaded else None,
        "max_mb": max(s["total_mb"] for s in loaded) if loaded else None,
        "slope_second_half_mb_per_min": slope,
        "growing_above_mb_per_min": limit,
        "slope_last_third_mb_per_min": last_third,
        "verdict": "n/a" if slope is None else ("growing" if slope > limit else "stable"),
        "rule": "growing when the least-squares slope of the summed RSS over the second half of "
                "the load exceeds max(2 MB/min, 0.5 % of its mean per minute)",
        "samples": len(samples),
        "by_process": per_process,
    }
