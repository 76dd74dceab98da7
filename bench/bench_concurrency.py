"""Per-instance HTTP concurrency: what one Flex Consumption instance gains from more requests in flight.

On Flex Consumption each instance takes at most ``perInstanceConcurrency`` HTTP requests at
once (infra/scale.json, deployed by the Bicep); the platform sends the rest to other instances.
This runs one ``dicomweb serve`` process at per-instance concurrency 1, 4, 16, 32 and 64 (a
fresh process each, so every level starts with cold caches) and drives it with as many
clients, each asking for random single frames of a 10,000-frame JPEG level one after another:
the load one instance sees when the platform keeps it full. For each level: frames/s, p50 and
p99, as ratios against concurrency 1 measured in the same run.

The chosen concurrency is where throughput stops rising (the next level adds less than 5%)
before p99 passes 2x its value at concurrency 1. Azurite, the Cosmos server, the service and
the client share this machine's two cores, which bounds throughput well below what one
Azure instance reading from Blob Storage gets; the shape of the curve is the finding.
Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_concurrency.py``
(``--seconds N`` per level, ``--levels 1,4,16``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import Result  # noqa: E402
from bench.bench_upload import served, upload  # noqa: E402
from dicomweb.cli import deployed_concurrency  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.wsi_factory import make_large_instance  # noqa: E402

LEVELS = (1, 4, 8, 16, 32, 64)
FRAMES = 10_000
#: The stored bytes as they are: what a viewer asking for a tile of a JPEG slide gets.
ACCEPT = {"accept": "image/jpeg"}
#: What a Blob request costs across a region's network, added to each (Azurite on loopback takes ~2 ms for a
#: small ranged read). Microsoft publishes no figure; single-digit to tens of milliseconds for standard
#: accounts is what its latency guide's examples and Azure Monitor's E2E latency show.
BLOB_LATENCY_MS = 10.0
#: The next level must add this much throughput for the curve to count as still rising.
RISING = 1.05
#: p99 may grow to this multiple of its value at concurrency 1.
P99_BOUND = 2.0


async def drive(url: str, frames: int, clients: int, seconds: float, seed: int) -> Result:
    """``clients`` closed-loop clients asking for random frames for ``seconds``; latencies of each answer."""
    latencies: list[float] = []
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with http.get(f"{url}/frames/{rng.randint(1, frames)}", headers=ACCEPT) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status} {body[:300]!r}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return Result(latencies, time.perf_counter() - started)


def choose(curve: dict[int, tuple[float, float]]) -> int:
    """The level where frames/s stops rising before p99 passes ``P99_BOUND`` x its value at the first level.

    ``curve`` maps concurrency to (frames/s, p99 seconds), in rising concurrency.
    """
    levels = sorted(curve)
    bound = curve[levels[0]][1] * P99_BOUND
    chosen = levels[0]
    for level, following in itertools.pairwise(levels):
        chosen = level
        rate, _ = curve[level]
        next_rate, next_p99 = curve[following]
        if next_p99 > bound or next_rate < rate * RISING:
            return chosen
    return levels[-1] if curve[levels[-1]][1] <= bound else chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--blob-latency-ms", type=float, default=BLOB_LATENCY_MS,
                        help=f"added to every Blob request (default {BLOB_LATENCY_MS}; 0: Azurite on loopback)")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    curve: dict[int, tuple[float, float]] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        slide = make_large_instance(work / "level.dcm", frames=FRAMES, frame_bytes=30000)
        emulators = Emulators(work / "emulators", blob_latency_ms=args.blob_latency_ms)
        settings = emulators.start()
        try:
            server = start_server(settings, work, concurrency=max(levels))
            try:
                upload(server, slide.path, work / "state.json")
                served(server, slide)
            finally:
                server.stop()
            for clients in levels:
                server = start_server(settings, work, concurrency=clients)
                try:
                    url = (f"{server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}"
                           f"/instances/{slide.sop_uid}")
                    asyncio.run(drive(url, FRAMES, clients, 1.0, seed=0))  # connections, the frame index
                    result = asyncio.run(drive(url, FRAMES, clients, args.seconds, seed=clients))
                finally:
                    server.stop()
                rate = result.per_second
                curve[clients] = (rate, result.p99_ms / 1000)
                rows.append((clients, rate, result.p50_ms, result.p99_ms))
        finally:
            emulators.stop()
    first_rate, first_p99 = curve[levels[0]]
    figures: dict[str, object] = {"seconds": args.seconds, "frames": FRAMES, "blob_latency_ms": args.blob_latency_ms}
    print(f"\nrandom single-frame GETs, one local-host process; {args.seconds:.0f} s per level; "
          f"{args.blob_latency_ms:.0f} ms added to each Blob request")
    print(f"{'concurrency':>11}{'frames/s':>10}{'x at 1':>8}{'p50 ms':>9}{'p99 ms':>9}{'x at 1':>8}")
    for clients, rate, p50, p99 in rows:
        print(f"{clients:>11}{rate:>10.0f}{rate / first_rate:>8.2f}{p50:>9.1f}{p99:>9.1f}"
              f"{p99 / 1000 / first_p99:>8.2f}")
        figures[f"c{clients}"] = {"frames_per_s": round(rate), "rate_ratio": round(rate / first_rate, 2),
                                  "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                                  "p99_ratio": round(p99 / 1000 / first_p99, 2)}
    chosen = choose(curve)
    figures["chosen"] = chosen
    figures["deployed"] = deployed_concurrency()
    print(f"chosen per-instance concurrency: {chosen} (infra/scale.json deploys {figures['deployed']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
