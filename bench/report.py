"""The bench's goals and its report: the summary table printed at the end (and kept in
var/bench/results.json), the py-spy and cProfile excerpts.
"""

from __future__ import annotations

from typing import Any

from bench import ingest, mixed
from bench.env import Config, say

# What each figure should reach (the summary marks PASS or FAIL).
GOALS = {
    "poll_app_over_bare": 0.75,
    "longpoll_held": 10_000,
    "compile_seconds": 2.0,
    "compile_peak_rss_mb": 512,
    "write_to_etag_p95_s": 1.0,
}


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else (f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s")


def summary(results: dict[str, Any], config: Config) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, goal: str = "", ok: bool | None = None) -> None:
        rows.append({"figure": name, "value": value, "goal": goal,
                     "result": "" if ok is None else ("PASS" if ok else "FAIL")})

    poll = results.get("poll")
    if poll:
        w = poll["headline_workers"]
        row(f"poll 304 app req/s (uvicorn --workers {w})", round(poll["app_rps"]))
        row("poll 304 bare-view req/s (same server, same chain)", round(poll["bare_rps"]))
        row("  bare view behind the web UI's middleware req/s", round(poll["bare_web_chain_rps"]))
        row("poll 304 nginx static req/s", round(poll["nginx_rps"] or 0))
        for workers, run in poll["by_workers"].items():
            ratio = run["app_over_bare"]
            row(f"app / bare (--workers {workers})", round(ratio, 3), "≥ 0.75",
                ratio >= GOALS["poll_app_over_bare"])
            row(f"  app / bare per server CPU-second (--workers {workers})",
                round(run["app_over_bare_per_cpu"], 3))
            if run.get("app_over_nginx") is not None:
                row(f"app / nginx (--workers {workers})", round(run["app_over_nginx"], 4))
        for workers, run in poll["by_workers"].items():
            row(f"  --workers {workers}: app / bare / nginx req/s",
                f"{run['app']['requests_per_second']:.0f} / "
                f"{run['bare']['requests_per_second']:.0f} / "
                f"{poll['nginx_by_workers'].get(workers, {}).get('requests_per_second', 0):.0f}")
    lp = results.get("longpoll")
    if lp:
        ok = (lp["held_inflight"] >= GOALS["longpoll_held"]
              and lp["received_new_etag"] == lp["clients"]
              and not lp["errors_after_publish"] and not lp["server_errors_logged"])
        row("long polls held (waiting; server sockets)",
            f"{lp['held_inflight']} ({lp['held_sockets']})",
            f"{GOALS['longpoll_held']:,} held, all get it, no error", ok)
        row("long polls that got the new ETag", f"{lp['received_new_etag']}/{lp['clients']}")
        ttr = lp["time_to_receive_s"]
        row("publish → client has new ETag p50 / p95 / max",
            f"{fmt_s(ttr['p50'])} / {fmt_s(ttr['p95'])} / {fmt_s(ttr['max'])}")
        errors = sum(lp["errors_after_publish"].values())
        row("  errors answered after the publish (retried)", errors)
        row("server RSS while holding", f"{lp['server_rss_during_hold_mb']:.0f} MB")
    comp = results.get("compile")
    if comp:
        for label, entry in comp["sizes"].items():
            goal, ok = "", None
            if label == "full":
                goal = "≤ 2 s, ≤ 512 MB"
                ok = (entry["publish_s"] <= GOALS["compile_seconds"]
                      and entry["publish_peak_rss_mb"] <= GOALS["compile_peak_rss_mb"])
            row(f"bundle_publish {label}: time / peak RSS",
                f"{entry['publish_s']:.3f} s / {entry['publish_peak_rss_mb']:.0f} MB", goal, ok)
            row(f"  {label}: compile_data / data.json / cedar / packaging",
                f"{entry['compile_data_s']:.3f} / {entry['data_json_s']:.3f} / "
                f"{entry['cedar_s']:.3f} / {entry['packaging_s']:.3f} s")
        for pair, ratios in comp["growth"].items():
            row(f"  growth {pair}: publish time / RSS over baseline / tracemalloc peak",
                " / ".join("n/a" if ratios[k] is None else f"×{ratios[k]:.1f}"
                           for k in ("publish_s", "publish_rss_over_baseline_mb",
                                     "tracemalloc_peak_mb")))
    e2e = results.get("write_to_etag")
    if e2e:
        lat = e2e["latency_s"]
        ok = lat["p95"] is not None and lat["p95"] <= GOALS["write_to_etag_p95_s"] \
            and not e2e["misses"]
        row("registry write → new ETag p50 / p95", f"{fmt_s(lat['p50'])} / "
            f"{fmt_s(lat['p95'])}", "p95 ≤ 1 s", ok)
    if results.get("ingest"):
        rows.extend(ingest.summary_rows(results["ingest"]))
    if results.get("mixed"):
        rows.extend(mixed.summary_rows(results["mixed"]))
    return rows


def print_profile(profile: dict[str, Any]) -> None:
    if not profile:
        return
    say(f"\nWhere the server's time goes (py-spy, --workers {profile['workers']}; % of samples):")
    for name in ("app", "bare"):
        found = profile.get(name) or {}
        if "error" in found:
            say(f"  {name}: py-spy failed: {found['error']}")
            continue
        if not found:
            continue
        say(f"  {name} ({found['samples']} samples) — self time by area:")
        for area, pct in found["self_by_area_pct"][:10]:
            say(f"    {pct:5.1f} %  {area}")
        say(f"  {name} — inclusive time of selected functions:")
        for fn, pct in found["inclusive_pct"][:12]:
            say(f"    {pct:5.1f} %  {fn}")


def trim_pstats(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:start + 26])


def print_summary(rows: list[dict[str, Any]]) -> None:
    say("\n" + "=" * 100)
    say("SUMMARY (this machine, one run)")
    say("=" * 100)
    width = max(len(r["figure"]) for r in rows) if rows else 10
    for r in rows:
        say(f"{r['figure']:<{width}}  {str(r['value']):<26} {r['goal']:<32} {r['result']}")
    say("=" * 100)
