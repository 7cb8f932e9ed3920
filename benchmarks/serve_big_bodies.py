"""`m3trt serve` under big and stalled request bodies: does it stay live, is its memory bounded?

    .venv/bin/python benchmarks/serve_big_bodies.py runs/gate/gate.m3 \
        --out benchmarks/results/serve_big_bodies

In one run, against `m3trt serve BUNDLE --max-body-mb 100 --timeout 5` on loopback:
1. one JSON infer request of `--json-mb` MB (a UINT8 tensor written as JSON numbers, the
   costliest body to parse) while another client polls /v2/health/live every 50 ms: the slowest
   and the median health answer, and how long the big request took (it is refused with a 400:
   the tensor has the wrong shape, which is found only after parsing);
2. `--stalled` clients that each send the headers of a 60 MB upload and 1 MB of it, then stop:
   the server's RSS while they hang, and what each of them is answered (408 after --timeout).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import rss_mib, server

from m3trt.bench.machine import describe_machine


def big_json(url: str, model: str, megabytes: float) -> dict[str, Any]:
    n = int(megabytes * 1e6 / 3)  # "0, " per element
    tensor = {"name": "image", "datatype": "UINT8", "shape": [n], "data": [0] * n}
    body = json.dumps({"inputs": [tensor]}).encode()
    done: dict[str, Any] = {}

    def post() -> None:
        request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=body)
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                done["status"] = response.status
        except urllib.error.HTTPError as exc:
            done["status"] = exc.code
        done["seconds"] = round(time.monotonic() - start, 2)

    thread = threading.Thread(target=post)
    thread.start()
    waits = []
    while thread.is_alive():
        start = time.monotonic()
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=120) as response:
            response.read()
        waits.append(time.monotonic() - start)
        time.sleep(0.05)
    thread.join()
    return {
        "body_mb": round(len(body) / 1e6, 1),
        "request_status": done.get("status"),
        "request_s": done.get("seconds"),
        "health_polls": len(waits),
        "health_worst_s": round(max(waits, default=0.0), 3),
        "health_median_s": round(statistics.median(waits), 3) if waits else None,
    }


def stalled_uploads(url: str, model: str, count: int, pid: int) -> dict[str, Any]:
    host, port = url.rsplit(":", 1)
    before = rss_mib(pid)
    conns = []
    for _ in range(count):
        conn = socket.create_connection((host, int(port)), timeout=60)
        head = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {60 << 20}\r\n\r\n"
        )
        conn.sendall(head.encode() + b" " * (1 << 20))
        conns.append(conn)
    time.sleep(1.0)
    during = rss_mib(pid)
    start = time.monotonic()
    answers = []
    deadline = start + 60
    for conn in conns:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            reply = conn.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
        except TimeoutError:
            reply = "no answer within 60 s"
        answers.append(reply)
        conn.close()
    return {
        "stalled_clients": count,
        "rss_mib_before": round(before, 1),
        "rss_mib_while_stalled": round(during, 1),
        "answers": sorted(set(answers)),
        "all_ended_after_s": round(time.monotonic() - start + 1.0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--json-mb", type=float, default=22.5)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_big_bodies"))
    parser.add_argument("--label", default="this checkout", help="What code ran, for the report.")
    args = parser.parse_args()
    model = args.bundle.resolve().name.removesuffix(".m3")
    extra = ["--max-body-mb", "100", "--timeout", "5"]
    with server(args.bundle, extra) as (url, proc):
        big = big_json(url, model, args.json_mb)
        stalled = stalled_uploads(url, model, args.stalled, proc.pid)
    result = {"machine": describe_machine(), "big_json": big, "stalled": stalled}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `m3trt serve` under big and stalled request bodies",
        "",
        f"`.venv/bin/python benchmarks/serve_big_bodies.py {args.bundle} --json-mb {args.json_mb} "
        f"--stalled {args.stalled}`; server: `--max-body-mb 100 --timeout 5`. "
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. "
        f"Code: {args.label}.",
        "",
        f"- One {big['body_mb']} MB JSON infer request (answered {big['request_status']} in "
        f"{big['request_s']} s) while /v2/health/live was polled {big['health_polls']} times: "
        f"slowest answer {big['health_worst_s']} s, median {big['health_median_s']} s.",
        f"- {stalled['stalled_clients']} clients each sent 1 MB of a 60 MB body and stopped: "
        f"server RSS {stalled['rss_mib_before']} MiB before, {stalled['rss_mib_while_stalled']} "
        f"MiB while they hung; answers {stalled['answers']}, the last after "
        f"{stalled['all_ended_after_s']} s.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
