"""One compile measurement in a fresh process (so that peak RSS belongs to it alone).

``python -m bench.compile_one MODE TENANT_SLUG [REPEAT] [WARM_SLUG]``; prints ``RESULT <json>``.

- ``stages``: compile_data, data.json serialisation, Cedar (policy + schema) and packaging
  (manifest, sign, tar, gzip) timed separately, REPEAT times; peak RSS during each stage.
- ``publish``: the whole ``bundle_publish(force=True)`` (compile, sign, store, record, announce),
  REPEAT times; peak RSS of the process.
- ``tracemalloc``: one ``bundle_publish`` with tracemalloc on: peak Python allocations.
- ``cprofile``: one ``bundle_publish`` under cProfile: the top functions.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    return _status("VmRSS")


def _peak() -> int:
    """Peak RSS of this process since the last ``_reset_peak`` (Linux VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries that over from the parent through fork and
    exec, so in a child of the orchestrator it reports the orchestrator's size."""
    return _status("VmHWM")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak RSS to the current RSS (Linux ≥ 4.0)
    except OSError:
        pass


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
    import django

    django.setup()


def _warm(slug: str | None) -> None:
    """Imports, the database connection and the code paths, on a tiny tenant."""
    if not slug:
        return
    from django.utils import timezone

    from bundles import publish
    from governance.tenancy.models import Tenant
    from registry.compiler import compile_data

    tenant = Tenant.objects.get(slug=slug)
    publish.bundle_files(compile_data(tenant, at=timezone.now()))


def stages(tenant, repeat: int) -> dict[str, Any]:
    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from bundles import cedar, keys, packaging
    from bundles.packaging import bundle_json
    from bundles.services import signing_key_for_build
    from registry.compiler import compile_data

    with transaction.atomic():  # it may create the tenant's first key (audited)
        key = signing_key_for_build(tenant=tenant)
    private = keys.load_private(key.private_key_encrypted)
    baseline = _rss()
    times: dict[str, list[float]] = {"compile_data": [], "data_json": [], "cedar": [],
                                     "packaging": []}
    rss: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for _ in range(repeat):
        now = timezone.now()
        _reset_peak()
        t0 = time.perf_counter()
        data = compile_data(tenant, at=now)
        t1 = time.perf_counter()
        rss["compile_data"] = _peak()
        _reset_peak()
        data_json = bundle_json(data)
        t2 = time.perf_counter()
        rss["data_json"] = _peak()
        _reset_peak()
        policy = cedar.compile_policy(data).encode("utf-8")
        schema = cedar.compile_schema(data).encode("utf-8")
        t3 = time.perf_counter()
        rss["cedar"] = _peak()
        _reset_peak()
        files = {"mcp/data.json": data_json, "mcp/policy.cedar": policy,
                 "mcp/schema.cedarschema": schema}
        tarball = packaging.package(
            files, scope=tenant.slug, revision_number=1, issued_at=now,
            expires_at=now + timedelta(seconds=settings.BUNDLE_TTL_SECONDS),
            issuer=settings.TOLLGATE_BASE_URL, kid=key.kid, private_key=private,
            schema_version=data["schema_version"])
        t4 = time.perf_counter()
        rss["packaging"] = _peak()
        for name, value in (("compile_data", t1 - t0), ("data_json", t2 - t1),
                            ("cedar", t3 - t2), ("packaging", t4 - t3)):
            times[name].append(value)
        sizes = {"data_json": len(data_json), "policy_cedar": len(policy),
                 "schema": len(schema), "tarball": len(tarball),
                 "grants_in_force": len(data["grants"]), "tools_in_bundle": len(data["tools"])}
        del data, data_json, policy, schema, files, tarball
    return {"times": times, "rss_high_water": rss, "baseline_rss": baseline, "sizes": sizes}


def publish_whole(tenant, repeat: int) -> dict[str, Any]:
    from bundles.publish import bundle_publish

    baseline = _rss()
    _reset_peak()
    times, build_ms = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        bundle = bundle_publish(tenant=tenant, trigger="bench", force=True)
        times.append(time.perf_counter() - t0)
        build_ms.append(bundle.build_ms)
    return {"times": times, "build_ms": build_ms, "baseline_rss": baseline,
            "peak_rss": _peak()}


def traced(tenant) -> dict[str, Any]:
    import tracemalloc

    from bundles.publish import bundle_publish

    tracemalloc.start()
    t0 = time.perf_counter()
    bundle_publish(tenant=tenant, trigger="bench", force=True)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"tracemalloc_peak": peak, "seconds_with_tracemalloc": elapsed}


def profiled(tenant, out: str) -> dict[str, Any]:
    import cProfile
    import pstats

    from bundles.publish import bundle_publish

    profiler = cProfile.Profile()
    profiler.enable()
    bundle_publish(tenant=tenant, trigger="bench", force=True)
    profiler.disable()
    profiler.dump_stats(out)
    report = {}
    for order in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(order).print_stats(25)
        report[order] = buffer.getvalue()
    return {"profile": out, **report}


def main() -> None:
    mode, slug = sys.argv[1], sys.argv[2]
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    warm = sys.argv[4] if len(sys.argv) > 4 else None
    _setup()
    from governance.tenancy.models import Tenant

    _warm(warm)
    tenant = Tenant.objects.get(slug=slug)
    if mode == "stages":
        result = stages(tenant, repeat)
    elif mode == "publish":
        result = publish_whole(tenant, repeat)
    elif mode == "tracemalloc":
        result = traced(tenant)
    elif mode == "cprofile":
        result = profiled(tenant, sys.argv[5])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
