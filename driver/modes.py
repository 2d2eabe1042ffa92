"""Benchmark modes (MMS suite) and the run of one driver invocation end to end.

- ``sweep``: every configuration at the given load levels (default: closed loop, auto concurrency);
- ``latency``: one client (closed loop, concurrency 1);
- ``throughput``: enough concurrency to saturate each configuration;
- ``concurrent_inference``: sweep ``--concurrency`` (default 1 2 4 8 16 32);
- ``load``: deploy the model ``--count`` times under different names at once; time until all serve;
- ``repeated_scale_calls``: scale to max(-r) replicas and back to 1, ``--repeat`` times, while a
  client runs; time each call; fail unless no query failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from driver import results
from driver.admin import Admin
from driver.errors import DeployError, DriverError
from driver.load import LoadGenerator, LoadLevel, make_inputs
from driver.plots import draw_all
from driver.recommend import describe, recommend
from driver.sweep import QUERY_TIMEOUT_S, Deployment, NodeConfig, plan, run_sweep
from driver.validate import Machine, SweepSpec

log = logging.getLogger(__name__)

CONCURRENT_INFERENCE_LEVELS = (1, 2, 4, 8, 16, 32)
SCALE_CLIENT_CONCURRENCY = 4
SERVE_POLL_TIMEOUT_S = 300.0


@contextlib.contextmanager
def endpoints(spec: SweepSpec, log_dir: Path) -> Iterator[tuple[str, str, str | None]]:
    """(management URL, client address): the running deployment named by the flags, or our own Stack."""
    if spec.frontend:
        yield f"http://{spec.management}", f"tcp://{spec.frontend}", None
        return
    from management.stack import Stack

    stack = Stack(backend=spec.backend, frontend_cpus=spec.frontend_cpus, log_dir=log_dir)
    log.info("starting a stack (backend %s, frontend on cores %s)", spec.backend, spec.frontend_cpus)
    try:
        stack.start()
    except Exception as err:  # the Stack's own errors carry the process log tail
        raise DriverError(f"could not start the stack: {err}") from err
    try:
        yield stack.management_url, stack.client_address, stack.admin_token
    finally:
        stack.stop()


async def open_client(address: str) -> Any:
    """A connected frontend.client.AsyncClient."""
    from frontend.client import AsyncClient

    client = AsyncClient(address, timeout_s=QUERY_TIMEOUT_S)
    connect = getattr(client, "connect", None)
    if connect is not None and inspect.iscoroutinefunction(connect):
        await connect()
    return client


async def close_client(client: Any) -> None:
    """Close a client whether its close() is sync or async."""
    res = client.close()
    if inspect.isawaitable(res):
        await res


async def wait_serving(client: Any, app: str, item: Any, t0: float, timeout_s: float) -> float:
    """Seconds from ``t0`` until ``app`` answers a query with a real (non-default) output."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pred = await client.predict(app, item)
            if not getattr(pred, "default", False):
                return time.monotonic() - t0
        except Exception as err:  # noqa: BLE001 - any failure means "not serving yet"
            log.debug("%s not serving yet: %s", app, err)
        if time.monotonic() > deadline:
            raise DriverError(f"{app} did not serve within {timeout_s:.0f}s")
        await asyncio.sleep(0.2)


async def mode_load(spec: SweepSpec, admin: Admin, client: Any) -> dict:
    """Deploy ``spec.count`` copies of the model in parallel; time until every one serves."""
    configs = plan(spec)[:1]
    deps = [Deployment(admin, spec, name=f"driver-{spec.model}-{i}") for i in range(spec.count)]
    item = make_inputs(spec.model_input.width, 1, spec.seed)[0]
    t0 = time.monotonic()
    try:
        per_model = await asyncio.gather(*(_load_one(dep, configs[0], client, item, t0) for dep in deps))
    finally:  # also when one failed: a deployment of our own must not stay behind on a shared service
        if spec.frontend:
            for d in deps:
                await asyncio.to_thread(_remove_quietly, d)
    total = time.monotonic() - t0
    log.info("all %d models serving after %.2fs", spec.count, total)
    return {"mode": "load", "count": spec.count, "node_config": configs[0].to_dict(),
            "models": per_model, "all_serving_s": total, "ok": True}


def _remove_quietly(dep: Deployment) -> None:
    """Remove ``dep``'s app and model, logging (not raising) a failure: cleanup must not hide the error."""
    try:
        dep.remove()
    except Exception as err:  # noqa: BLE001 - whatever failed, the original error matters more
        log.warning("could not remove %s: %s", dep.model_name, err)


async def _load_one(dep: Deployment, config: Any, client: Any, item: Any, t0: float) -> dict:
    await asyncio.to_thread(dep.apply, config)
    deployed = time.monotonic() - t0
    serving = await wait_serving(client, dep.app, item, t0, SERVE_POLL_TIMEOUT_S)
    log.info("%s: deploy call done after %.2fs, serving after %.2fs", dep.model_name, deployed, serving)
    return {"model_name": dep.model_name, "deploy_s": deployed, "serving_s": serving}


async def mode_repeated_scale_calls(spec: SweepSpec, admin: Admin, client: Any) -> dict:
    """Scale up to max(-r) and back to 1, ``spec.repeat`` times, under load; every query must succeed."""
    top = max(spec.num_replicas)
    p = spec.cpus_per_replica[0]
    nc = plan(spec, levels=[LoadLevel.closed(SCALE_CLIENT_CONCURRENCY)])[0]
    nc.num_replicas = 1
    dep = Deployment(admin, spec)
    calls: list[dict] = []
    try:
        await asyncio.to_thread(dep.apply, nc)
        inputs = make_inputs(spec.model_input.width, 4, spec.seed)
        await wait_serving(client, dep.app, inputs[0], time.monotonic(), SERVE_POLL_TIMEOUT_S)
        gen = LoadGenerator(client, dep.app, inputs, nc.load, seed=spec.seed)
        await gen.start()
        try:
            for rnd in range(spec.repeat):
                for target in (top, 1):
                    seconds = await asyncio.to_thread(dep.scale, target, p)
                    calls.append({"round": rnd, "num_replicas": target, "seconds": seconds})
                    log.info("round %d: set_num_replicas %d took %.2fs", rnd + 1, target, seconds)
                    await asyncio.sleep(spec.window_s)  # serve a while at this size
        finally:
            await gen.stop(timeout_s=QUERY_TIMEOUT_S)
    finally:  # a failed round must not leave its deployment behind on a shared service
        if spec.frontend:
            await asyncio.to_thread(_remove_quietly, dep)
    stats, _ = gen.take_window("scale")
    failed = gen.total_errors
    secs = [c["seconds"] for c in calls]
    log.info("%d scale calls (mean %.2fs, max %.2fs); %d queries answered, %d failed, %d defaults",
             len(calls), sum(secs) / len(secs), max(secs), gen.total_answered, failed, gen.total_defaults)
    return {"mode": "repeated_scale_calls", "max_replicas": top, "calls": calls,
            "mean_call_s": sum(secs) / len(secs), "max_call_s": max(secs),
            "queries_answered": gen.total_answered, "failed_queries": failed,
            "error_codes": stats.error_codes, "defaults": gen.total_defaults, "ok": failed == 0}


def sweep_configs(spec: SweepSpec) -> list[NodeConfig]:
    """The configurations of a sweep-like mode (sweep, latency, throughput, concurrent_inference)."""
    levels: list[LoadLevel | None] | None = None
    if spec.mode == "latency":
        levels = [LoadLevel.closed(1)]
    elif spec.mode == "concurrent_inference" and spec.load_levels == [None]:
        levels = [LoadLevel.closed(c) for c in CONCURRENT_INFERENCE_LEVELS]
    return plan(spec, levels, saturate=spec.mode == "throughput")


async def _run(spec: SweepSpec, admin: Admin, address: str, doc: dict, save) -> None:
    client = await open_client(address)
    try:
        if spec.mode == "load":
            doc["mode_results"] = await mode_load(spec, admin, client)
        elif spec.mode == "repeated_scale_calls":
            doc["mode_results"] = await mode_repeated_scale_calls(spec, admin, client)
        else:
            await run_sweep(spec, admin, client, doc, sweep_configs(spec), on_run=save)
    finally:
        await close_client(client)


def run(spec: SweepSpec, machine: Machine, args: dict) -> int:
    """Run ``spec.mode`` end to end: results JSON + CSV, table, plots and recommendation. Exit code."""
    name_stamp = results.stamp()
    out = Path(spec.out_dir)
    doc = results.new_document(args, results.machine_info(machine.usable_cpus, machine.driver_cpus,
                                                          machine.gpu_count),
                               spec.model, spec.slo_ms, spec.target_qps)
    doc["mode"] = spec.mode

    def save(d: dict) -> None:
        d["recommendation"] = recommend(d["runs"], spec.slo_ms, spec.target_qps) if d["runs"] else None
        results.write(d, out, name_stamp)

    failed: Exception | None = None
    try:
        with endpoints(spec, out / f"logs-{name_stamp}") as (management_url, address, token):
            asyncio.run(_run(spec, Admin(management_url, token=token), address, doc, save))
    except (DriverError, DeployError) as err:
        failed = err
        log.error("run stopped: %s", err)
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if failed:
        doc["error"] = str(failed)
    save(doc)
    json_path, csv_path = out / f"results-{name_stamp}.json", out / f"results-{name_stamp}.csv"
    if doc["runs"]:
        print(results.table(doc))
        for line in describe(doc["recommendation"]):
            print(line)
        for png in draw_all(doc, out, name_stamp):
            print(f"plot: {png}")
    mode_results = doc.get("mode_results")
    if mode_results:
        print(f"{spec.mode}: " + ", ".join(f"{k}={v}" for k, v in mode_results.items()
                                           if not isinstance(v, (list, dict))))
    print(f"results: {json_path} {csv_path}")
    if failed or (mode_results and not mode_results.get("ok", True)):
        return 1
    return 0
