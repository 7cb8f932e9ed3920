"""Load test of `m3trt serve` with Triton's own HTTP client, against the same bundle offline.

    .venv/bin/python benchmarks/serve_load.py BUNDLE [--concurrency 1,4,16,64] [--duration 10]
        [--json benchmarks/results/serve_load.json] [--md benchmarks/results/serve_load.md]

In one run: `m3trt bench BUNDLE --batch-sizes 1,16` (the offline engine: batch-1 latency and
batch-16 throughput), then `m3trt serve BUNDLE` on loopback and, per concurrency level, N
greenlets of `tritonclient.http` each sending batch-1 binary requests back to back for
`--duration` seconds after a warm-up; the server's /metrics give the mean batch per level. Then
a burst of unthrottled requests at a server with a small queue (503s, not memory growth) and
SIGTERM under load (every accepted request answered). The client runs on the same cores as the
server, as the acceptance criterion asks; on a shared machine say so (the output does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
M3 = [sys.executable, "-m", "m3trt.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per level.")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/serve_load.json")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks/results/serve_load.md")
    parser.add_argument("--note", default="", help="Free text recorded with the results.")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    levels = [int(x) for x in args.concurrency.split(",")]

    from m3trt.bench.machine import describe_machine
    from m3trt.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    offline = offline_bench(args.bundle, args.duration, args.warmup)
    print(f"offline: {offline}", flush=True)
    image = sample_image(bundle.model.image_size)
    serve_args = ["--max-batch-size", str(args.max_batch_size)]
    serve_args += ["--max-queue-delay-ms", str(args.max_queue_delay_ms)]
    levels_out = []
    main_server = server(args.bundle, serve_args)
    with main_server as (url, _proc):
        engine = [x.strip() for x in main_server.log if x.startswith("model ")]
        for c in levels:
            result = load(url, bundle.name, image, c, args.duration, args.warmup)
            print(f"concurrency {c}: {result}", flush=True)
            levels_out.append(result)
    overload = queue_overload(args.bundle, bundle.name, image)
    print(f"overload: {overload}", flush=True)
    sigterm = sigterm_under_load(args.bundle, bundle.name, image)
    print(f"sigterm: {sigterm}", flush=True)

    by_c = {r["concurrency"]: r for r in levels_out}
    checks = {}
    if 16 in by_c:
        ratio = by_c[16]["throughput_rps"] / offline["b16_images_per_s"]
        checks["c16_over_offline_b16"] = {"value": ratio, "target": ">= 0.5", "ok": ratio >= 0.5}
    if 1 in by_c:
        excess = by_c[1]["latency_ms"]["p99"] - offline["b1_p99_ms"]
        checks["c1_p99_minus_offline_b1_p99_ms"] = {
            "value": excess,
            "target": "<= 2.0",
            "ok": excess <= 2.0,
        }
    report = {
        "machine": describe_machine(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "note": args.note,
        "bundle": {
            "path": str(args.bundle),
            "name": bundle.name,
            "backbone": bundle.model.backbone,
            "image_size": bundle.model.image_size,
            "target": bundle.target,
            "precision": bundle.precision,
        },
        "server": {
            "engine": engine,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms,
        },
        "request": "batch-1 image (uint8, binary tensor extension) + all four outputs, binary",
        "duration_s": args.duration,
        "offline": offline,
        "levels": levels_out,
        "overload": overload,
        "sigterm": sigterm,
        "checks": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.md.write_text(markdown(report))
    print(markdown(report))


# ---------------------------------------------------------------------------------- offline
def offline_bench(bundle: Path, duration: float, warmup: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        command = [*M3, "-q", "bench", str(bundle), "--batch-sizes", "1,16"]
        command += ["--duration", str(duration), "--warmup", str(warmup), "--json", str(out)]
        command += ["--device", "cpu"]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    by_b = {r["batch_size"]: r for r in data["results"]}
    return {
        "b1_images_per_s": by_b[1]["images_per_s"],
        "b1_median_ms": by_b[1]["latency_ms"]["median"],
        "b1_p99_ms": by_b[1]["latency_ms"]["p99"],
        "b16_images_per_s": by_b[16]["images_per_s"],
        "b16_median_ms": by_b[16]["latency_ms"]["median"],
    }


def sample_image(size: int) -> np.ndarray:
    """A real photo-like input: a synthetic scene through m3trt's own decoder."""
    from m3trt.data.images import load_image
    from m3trt.data.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), n=20, size=size, seed=11)
        path = sorted(p for p in Path(tmp).rglob("*") if p.suffix in (".jpg", ".png"))[0]
        return load_image(path, size)[None]


# ----------------------------------------------------------------------------------- server
class server:
    """`m3trt serve BUNDLE --port 0` in a subprocess; yields (host:port, process)."""

    def __init__(self, bundle: Path, extra: list[str]) -> None:
        self.command = [*M3, "serve", str(bundle), "--port", "0", "--no-access-log", *extra]

    def __enter__(self) -> tuple[str, subprocess.Popen]:
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("m3trt serve exited: " + "".join(self.log))
            self.log.append(line)
            found = re.search(r"on http://(\S+) ", line)
            if found:
                return found.group(1), self.proc

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def metrics(url: str) -> str:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as response:
        return response.read().decode()


def batch_totals(text: str) -> tuple[float, float]:
    count = re.search(r"m3trt_batch_size_count\{[^}]*\} (\S+)", text)
    total = re.search(r"m3trt_batch_size_sum\{[^}]*\} (\S+)", text)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


# ------------------------------------------------------------------------------------- load
def load(
    url: str, model: str, image: np.ndarray, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` greenlets, each with requests back to back; latency per request."""
    import gevent
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url, concurrency=concurrency, connection_timeout=60, network_timeout=60
    )
    inputs = [httpclient.InferInput("image", list(image.shape), "UINT8")]
    inputs[0].set_data_from_numpy(image, binary_data=True)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"record": False, "stop": False}

    def worker() -> None:
        while not state["stop"]:
            start = time.perf_counter()
            try:
                client.infer(model, inputs)
            except Exception as exc:
                key = type(exc).__name__ + ": " + " ".join(str(exc).split())[:80]
                errors[key] = errors.get(key, 0) + 1
                continue
            if state["record"]:
                latencies.append((time.perf_counter() - start) * 1e3)

    greenlets = [gevent.spawn(worker) for _ in range(concurrency)]
    gevent.sleep(warmup)
    before = batch_totals(metrics(url))
    latencies.clear()
    state["record"] = True
    t0 = time.perf_counter()
    gevent.sleep(duration)
    state["record"] = False
    elapsed = time.perf_counter() - t0
    done = len(latencies)
    after = batch_totals(metrics(url))
    state["stop"] = True
    gevent.joinall(greenlets, timeout=30)
    client.close()
    calls = after[0] - before[0]
    return {
        "concurrency": concurrency,
        "requests": done,
        "throughput_rps": done / elapsed,
        "latency_ms": stats(latencies),
        "errors": errors,
        "mean_batch": (after[1] - before[1]) / calls if calls else None,
    }


def stats(samples: list[float]) -> dict[str, float]:
    from m3trt.bench.stats import median, percentile

    ordered = sorted(samples)
    if not ordered:
        return {}
    return {  # trtexec's rules, as `m3trt bench` reports the offline figures
        "p50": median(ordered),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "mean": float(np.mean(ordered)),
        "max": ordered[-1],
    }


def queue_overload(bundle: Path, model: str, image: np.ndarray) -> dict[str, Any]:
    """256 simultaneous requests at a server that queues at most 16 images: 503s, bounded RSS."""
    import gevent
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    extra = ["--max-queue", "16", "--max-batch-size", "16"]
    with server(bundle, extra) as (url, proc):
        client = httpclient.InferenceServerClient(url, concurrency=256, network_timeout=60)
        inputs = [httpclient.InferInput("image", list(image.shape), "UINT8")]
        inputs[0].set_data_from_numpy(image, binary_data=True)
        codes: dict[str, int] = {}
        rss = [rss_mib(proc.pid)]

        def one() -> None:
            try:
                client.infer(model, inputs)
                key = "200"
            except InferenceServerException as exc:
                key = str(exc.status())
            codes[key] = codes.get(key, 0) + 1

        for _ in range(4):
            gevent.joinall([gevent.spawn(one) for _ in range(256)], timeout=60)
            rss.append(rss_mib(proc.pid))
        client.close()
        return {"requests": 4 * 256, "status_counts": codes, "max_queue_images": 16,
                "rss_mib_before_and_after_each_burst": rss}  # fmt: skip


def sigterm_under_load(bundle: Path, model: str, image: np.ndarray) -> dict[str, Any]:
    """SIGTERM while 16 clients send: every request the server logged was answered with 200."""
    import gevent
    import tritonclient.http as httpclient

    cmd = server(bundle, [])
    cmd.command.remove("--no-access-log")
    with cmd as (url, proc):
        client = httpclient.InferenceServerClient(url, concurrency=16, network_timeout=60)
        inputs = [httpclient.InferInput("image", list(image.shape), "UINT8")]
        inputs[0].set_data_from_numpy(image, binary_data=True)
        ok, failed = [0], [0]
        stop = [False]

        def worker() -> None:
            while not stop[0]:
                try:
                    client.infer(model, inputs)
                    ok[0] += 1
                except Exception:
                    failed[0] += 1  # connection refused or closed: not accepted
                    return

        greenlets = [gevent.spawn(worker) for _ in range(16)]
        gevent.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        gevent.joinall(greenlets, timeout=30)
        stop[0] = True
        code = proc.wait(30)
        cmd.log.extend(proc.stderr.readlines())
    logged = [x for x in cmd.log if "/infer " in x]
    statuses: dict[str, int] = {}
    for line in logged:
        status = line.split()[-3]
        statuses[status] = statuses.get(status, 0) + 1
    return {"exit_code": code, "answered_200": ok[0], "server_logged": statuses,
            "client_refused_after_sigterm": failed[0],
            "lost": len(logged) - ok[0]}  # fmt: skip


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------------- markdown
def markdown(r: dict[str, Any]) -> str:
    b, o = r["bundle"], r["offline"]
    lines = [
        "# `m3trt serve` under load (benchmarks/serve_load.py)",
        "",
        f"Bundle: {b['path']} ({b['backbone']}, {b['image_size']} px, {b['target']} "
        f"{b['precision']}). Server: max batch {r['server']['max_batch_size']}, max queue delay "
        f"{r['server']['max_queue_delay_ms']} ms; {'; '.join(r['server']['engine'])}. Requests: "
        f"{r['request']}; {r['duration_s']:g} s per level after a warm-up.",
        "",
        f"Machine: {r['machine']['cpu']}, "
        f"{os.cpu_count()} cores, load generator on the same cores; 1/5/15-minute load average "
        f"{_load(r['load_average']['start'])} at the start, {_load(r['load_average']['end'])} at "
        f"the end. {r['note']}",
        "",
        f"Offline (`m3trt bench`, same run): batch 1 median {o['b1_median_ms']:.2f} ms, p99 "
        f"{o['b1_p99_ms']:.2f} ms ({o['b1_images_per_s']:.1f} img/s); batch 16 "
        f"{o['b16_images_per_s']:.1f} img/s.",
        "",
        "| concurrency | req/s | x offline b16 | p50 ms | p90 ms | p99 ms | mean batch | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in r["levels"]:
        lat = lv["latency_ms"]
        lines.append(
            f"| {lv['concurrency']} | {lv['throughput_rps']:.1f} | "
            f"{lv['throughput_rps'] / o['b16_images_per_s']:.2f} | {lat['p50']:.2f} | "
            f"{lat['p90']:.2f} | {lat['p99']:.2f} | "
            f"{lv['mean_batch'] or 0:.1f} | {sum(lv['errors'].values())} |"
        )
    lines.append("")
    for name, check in r["checks"].items():
        verdict = "met" if check["ok"] else "NOT met"
        lines.append(f"- {name}: {check['value']:.3f} (target {check['target']}): {verdict}")
    ov, st = r["overload"], r["sigterm"]
    lines.append(
        f"- Overload ({ov['requests']} requests in bursts of 256, queue of "
        f"{ov['max_queue_images']} images): status counts {ov['status_counts']}; server RSS "
        "before and after each burst "
        + " -> ".join(f"{x:.0f}" for x in ov["rss_mib_before_and_after_each_burst"])
        + " MiB."
    )
    lines.append(
        f"- SIGTERM under load (16 clients): exit code {st['exit_code']}, {st['answered_200']} "
        f"answered 200, server log {st['server_logged']}, lost {st['lost']}, "
        f"{st['client_refused_after_sigterm']} clients refused after the signal."
    )
    return "\n".join(lines) + "\n"


def _load(values: list[float] | tuple[float, ...]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
