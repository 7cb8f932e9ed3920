"""``m3trt serve``: load bundles, build the app, run uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import ipaddress
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m3trt.errors import InputError
from m3trt.runtime.bundle import BUNDLE_SUFFIX
from m3trt.serve.limits import Limits

INSTALL = "pip install 'm3trt[serve]'"


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``m3trt serve`` takes besides the bundles and the address."""

    max_batch: int = 16
    max_delay_ms: float = 2.0
    device: str = "cpu"
    engine: str = "auto"
    threads: int | None = None
    limits: Limits = field(default_factory=Limits)


def parse_model_specs(args: Sequence[str]) -> list[tuple[str, Path]]:
    """``BUNDLE`` (named after its folder without ``.m3``) or ``NAME=BUNDLE``; names unique."""
    specs: list[tuple[str, Path]] = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep:
            path = arg
            name = Path(arg.rstrip("/\\")).name.removesuffix(BUNDLE_SUFFIX)
        elif not path:  # Path("") is ".", which was then reported as "not an m3trt bundle"
            raise InputError(f"{arg}: names no bundle; use NAME=BUNDLE")
        if not name or "/" in name or not name.isprintable() or name.strip() != name:
            raise InputError(f"{arg}: cannot name a model {name!r}; use NAME=BUNDLE")
        if any(name == n for n, _ in specs):
            raise InputError(
                f"{arg}: two models named {name!r}; use NAME=BUNDLE to tell them apart"
            )
        specs.append((name, Path(path)))
    if not specs:
        raise InputError("give at least one BUNDLE to serve")
    return specs


def require_web_stack() -> None:
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            raise InputError(f"m3trt serve needs {module}: {INSTALL}") from None


def load_models(specs: Sequence[tuple[str, Path]], options: ServeOptions, metrics=None):
    """Open each bundle's annotator (hashes verified) and wrap it for serving."""
    from m3trt.runtime.annotator import Annotator
    from m3trt.serve.model import ServedModel

    if not 1 <= options.max_batch <= 1024:
        raise InputError(f"--max-batch-size must be 1..1024, not {options.max_batch}")
    if not 0 <= options.max_delay_ms <= 1000:
        raise InputError(f"--max-queue-delay-ms must be 0..1000, not {options.max_delay_ms}")
    if options.limits.max_queue < options.max_batch:
        raise InputError(
            f"--max-queue {options.limits.max_queue} must be at least --max-batch-size "
            f"({options.max_batch})"
        )
    on_batch = metrics.observe_batch if metrics is not None else None
    models = []
    for name, path in specs:
        annotator = Annotator.load(
            path, device=options.device, engine=options.engine, threads=options.threads
        )
        low, high = annotator.engine.batch_range
        if not low <= options.max_batch <= high:
            raise InputError(
                f"{path}: --max-batch-size {options.max_batch} is outside the batches its "
                f"{annotator.engine.kind} engine accepts ({low}..{high})"
            )
        models.append(
            ServedModel(
                name,
                annotator,
                max_batch=options.max_batch,
                max_delay_s=options.max_delay_ms / 1e3,
                max_queue=options.limits.max_queue,
                max_pixels=options.limits.max_pixels,
                on_batch=on_batch,
            )
        )
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    specs: Sequence[tuple[str, Path]],
    host: str,
    port: int,
    options: ServeOptions,
    *,
    say: Callable[[str], None] = print,
    access_log: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests finish before it returns."""
    require_web_stack()
    from m3trt.serve.app import bind, create_app, uvicorn_server
    from m3trt.serve.metrics import Metrics

    _configure_logging(access_log)
    metrics = Metrics()
    models = load_models(specs, options, metrics)
    app = create_app(models, options.limits, metrics)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address
    for model in models:
        say(f"model {model.name}: {model.annotator.description}")
    if not is_loopback(host):
        say(f"warning: listening on {host}, reachable from other machines; there is no auth")
    say(
        f"serving {', '.join(m.name for m in models)} on http://{url_host}:{bound_port} "
        f"(max batch {options.max_batch}, max queue delay {options.max_delay_ms:g} ms)"
    )
    server = uvicorn_server(app, options.limits)
    # The ~50k objects of the loaded stack (engines, web framework, metrics) never die; frozen,
    # Python's full collections stop walking them. A full collection paused a request by 27-34 ms
    # about every 10 s at concurrency 1 before this; none over 1 ms after.
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
    why = ", ".join(signal.Signals(s).name for s in server.stopped_by) or "shutdown"
    say(f"stopped ({why}): in-flight requests were answered")


def _configure_logging(access_log: bool) -> None:
    logger = logging.getLogger("m3trt.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if access_log else logging.WARNING)
    logger.propagate = False
