#!/usr/bin/env python3
"""The reference for `bench perf`: Feishu's official Python SDK (lark-oapi) making
withdraw_onboarding calls straight to a Feishu endpoint (the sandbox) from a thread pool.

Usage: lark_oapi_bench.py BASE_URL APP_ID APP_SECRET DURATION THREADS

Prints one JSON line: {calls, seconds, calls_per_sec, cpu_seconds, cpu_us_per_call, errors}
(CPU of this whole process, all threads, from getrusage(RUSAGE_SELF) across the load).
Exits 3 when lark-oapi is not installed, 1 when no call succeeded.
"""
import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

try:
    import lark_oapi as lark
    from lark_oapi.api.corehr.v2 import (
        WithdrawOnboardingPreHireRequest,
        WithdrawOnboardingPreHireRequestBody,
    )
except ImportError as e:
    print(f"lark-oapi is not installed ({e}): pip install lark-oapi", file=sys.stderr)
    sys.exit(3)

PRE_HIRE_ID = "7345005664477775407"
REASON = "候选人放弃入职"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sdk_version():
    try:
        from importlib.metadata import version

        return version("lark-oapi")
    except Exception:  # noqa: BLE001 - the version is informative only
        return None


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    base_url, app_id, app_secret = sys.argv[1:4]
    duration, threads = float(sys.argv[4]), int(sys.argv[5])
    client = (
        lark.Client.builder()
        .app_id(app_id)
        .app_secret(app_secret)
        .domain(base_url)
        .timeout(10)
        .log_level(lark.LogLevel.ERROR)
        .build()
    )
    pre_hire = client.corehr.v2.pre_hire

    def withdraw():
        # Built per call, as an application would.
        body = (
            WithdrawOnboardingPreHireRequestBody.builder()
            .pre_hire_id(PRE_HIRE_ID)
            .withdraw_reason(REASON)
            .build()
        )
        request = WithdrawOnboardingPreHireRequest.builder().request_body(body).build()
        return pre_hire.withdraw_onboarding(request).success()

    # One call first: the SDK fetches and caches the tenant token.
    if not withdraw():
        print("the first withdraw call failed", file=sys.stderr)
        sys.exit(1)

    lock = threading.Lock()
    totals = {"calls": 0, "errors": 0}

    def worker(end):
        calls = errors = 0
        while time.monotonic() < end:
            try:
                ok = withdraw()
            except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop
                ok = False
            if ok:
                calls += 1
            else:
                errors += 1
        with lock:
            totals["calls"] += calls
            totals["errors"] += errors

    cpu0, t0 = cpu_seconds(), time.monotonic()
    end = t0 + duration
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(threads):
            pool.submit(worker, end)
    seconds = time.monotonic() - t0
    cpu = cpu_seconds() - cpu0
    calls = totals["calls"]
    print(
        json.dumps(
            {
                "calls": calls,
                "errors": totals["errors"],
                "seconds": round(seconds, 3),
                "calls_per_sec": round(calls / seconds, 1) if seconds > 0 else 0.0,
                "cpu_seconds": round(cpu, 3),
                "cpu_us_per_call": round(cpu * 1e6 / calls, 1) if calls else None,
                "threads": threads,
                "sdk_version": sdk_version(),
            }
        )
    )
    sys.exit(0 if calls else 1)


if __name__ == "__main__":
    main()
