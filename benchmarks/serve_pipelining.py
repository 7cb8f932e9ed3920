"""`m3trt serve` against HTTP/1.1 pipelining: is one client's memory bounded, are all answered?

    .venv/bin/python benchmarks/serve_pipelining.py runs/gate/gate.m3 \
        --out benchmarks/results/serve_pipelining

Two servers in one run, each fresh: `m3trt serve BUNDLE --max-body-mb 4 --timeout 5` as it is
(its connections parse a slice at a time and stop at 8 queued requests), then the same command
with uvicorn's own httptools protocol swapped back in (what m3trt ran until 2026-12-02). Against
each:
1. one client writes `--flood` valid JSON infer requests of ~37 KB back to back on one connection
   and never reads an answer, for `--seconds`: the bytes the server took, and its peak RSS;
2. one client pipelines `--small` `GET /v2/health/live` in one write, then reads: how many
   answers came back, in how long (every request must be answered, in order).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import rss_mib, server

from m3trt.bench.machine import describe_machine

UVICORN_OWN = (
    "import sys, m3trt.serve.http_protocol as ours;"
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol;"
    "ours.BoundedPipelineProtocol = HttpToolsProtocol;"
    "from m3trt.cli import main; sys.argv[0] = 'm3trt'; main()"
)


def flood(url: str, model: str, count: int, seconds: float, pid: int) -> dict[str, Any]:
    host, port = url.rsplit(":", 1)
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 64, 64, 3], "data": [0] * 12288}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    data = memoryview((head.encode() + body) * count)
    before = rss_mib(pid)
    conn = socket.create_connection((host, int(port)))
    conn.setblocking(False)
    start = time.monotonic()
    sent = 0
    while sent < len(data) and time.monotonic() - start < seconds:
        try:
            sent += conn.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    took = time.monotonic() - start
    during, peak = rss_mib(pid), rss_mib(pid, "VmHWM")
    conn.close()
    time.sleep(2.0)
    return {
        "requests": count,
        "request_bytes": len(data) // count,
        "seconds": round(took, 1),
        "mb_taken": round(sent / 1e6, 1),
        "mb_offered": round(len(data) / 1e6, 1),
        "rss_mib_before": round(before, 1),
        "rss_mib_at_end": round(during, 1),
        "rss_mib_peak": round(peak, 1),
        "rss_mib_after_close": round(rss_mib(pid), 1),
    }


def small(url: str, count: int) -> dict[str, Any]:
    host, port = url.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=30)
    start = time.monotonic()
    conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    got = b""
    while got.count(b"HTTP/1.1 ") < count and time.monotonic() - start < 60:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    conn.close()
    return {
        "requests": count,
        "answered_200": got.count(b"HTTP/1.1 200 "),
        "other_answers": got.count(b"HTTP/1.1 ") - got.count(b"HTTP/1.1 200 "),
        "seconds": round(time.monotonic() - start, 2),
    }


def run(bundle: Path, args: argparse.Namespace, own: bool) -> dict[str, Any]:
    model = bundle.resolve().name.removesuffix(".m3")
    cmd = server(bundle, ["--max-body-mb", "4", "--timeout", "5"])
    if own:
        serve_args = cmd.command[cmd.command.index("serve") :]
        cmd.command = [sys.executable, "-c", UVICORN_OWN, *serve_args]
    with cmd as (url, proc):
        small_result = small(url, args.small)
        flood_result = flood(url, model, args.flood, args.seconds, proc.pid)
    return {"small": small_result, "flood": flood_result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--flood", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_pipelining"))
    args = parser.parse_args()
    result = {
        "machine": describe_machine(),
        "m3trt": run(args.bundle, args, own=False),
        "uvicorn_own": run(args.bundle, args, own=True),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `m3trt serve` against HTTP/1.1 pipelining",
        "",
        f"`.venv/bin/python benchmarks/serve_pipelining.py {args.bundle} --flood {args.flood} "
        f"--seconds {args.seconds:g} --small {args.small}`; server `--max-body-mb 4 --timeout 5`. "
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores.",
        "",
        "| protocol | flood: MB taken of offered | RSS MiB before / peak / after close "
        "| small: answered 200 | small: s |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("m3trt (bounded)", "m3trt"), ("uvicorn's own", "uvicorn_own")):
        f, s = result[key]["flood"], result[key]["small"]
        lines.append(
            f"| {name} | {f['mb_taken']} of {f['mb_offered']} in {f['seconds']} s "
            f"| {f['rss_mib_before']} / {f['rss_mib_peak']} / {f['rss_mib_after_close']} "
            f"| {s['answered_200']} of {s['requests']} | {s['seconds']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
