"""CPU per request of ferry's HTTP protocol, against another version of it, in one process.

Each version of `ProxyHttpProtocol` (this tree's, and the one in the file given with
`--baseline`, e.g. an older `src/ferry/adapters/uvicorn.py` from `git show`) serves
keep-alive requests on one connection, under uvloop, from a transport that records
what is written: a 500-byte POST in, the 202 of a bare ASGI app out, one request at a
time as a client that waits for each answer sends them. No sockets, no TLS, no Redis:
only what the protocol adds, which on a loaded machine wrk's figures cannot resolve.
Rounds alternate between the versions (so drift hits both alike); the table shows the
median CPU (process time) per request, and the ratio.

    git show <rev>:src/ferry/adapters/uvicorn.py > /tmp/old_uvicorn.py
    python bench/protocol_cost.py --baseline /tmp/old_uvicorn.py [--requests 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.server import ServerState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ferry.adapters import uvicorn as current  # noqa: E402

BODY = b'{"payload": "' + b"x" * 485 + b'"}'
REQUEST = (
    b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer bench-key\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"id":"0190f1b2-0000-7000-8000-000000000000","status":"queued"}'
assert len(BODY) == 500


async def app(scope: Any, receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.answered = asyncio.Event()

    def write(self, data: Any) -> None:
        self.answers += 1
        self.answered.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8001), "peername": ("127.0.0.1", 50000)}.get(name, default)


async def serve(protocol_class: type, requests: int) -> float:
    """CPU seconds per request of `requests` requests on one keep-alive connection."""
    config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_level="critical")
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        transport.answered.clear()
        protocol.data_received(REQUEST)
        await transport.answered.wait()
    spent = time.process_time() - started
    protocol.connection_lost(None)
    assert transport.answers == requests, transport.answers
    return spent / requests


def load(path: Path) -> type:
    spec = importlib.util.spec_from_file_location("baseline_uvicorn", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ProxyHttpProtocol  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another version of src/ferry/adapters/uvicorn.py")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    versions = {"baseline": load(args.baseline), "this tree": current.ProxyHttpProtocol}
    costs: dict[str, list[float]] = {name: [] for name in versions}

    async def run() -> None:
        for name, protocol_class in versions.items():  # warm up
            await serve(protocol_class, 2000)
        for _ in range(args.rounds):
            for name, protocol_class in versions.items():
                costs[name].append(await serve(protocol_class, args.requests))

    uvloop.run(run())
    base = statistics.median(costs["baseline"])
    print(f"{args.requests} keep-alive requests a round, {args.rounds} rounds, median CPU per request:")
    for name, spent in costs.items():
        median = statistics.median(spent)
        print(f"  {name:>9}: {median * 1e6:6.2f} µs  (min {min(spent) * 1e6:.2f}, max {max(spent) * 1e6:.2f})  {median / base:.3f}x")


if __name__ == "__main__":
    main()
