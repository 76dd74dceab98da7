"""Core benchmark: STOW of a large WSI instance and frame reads, each against raw Azurite.

Starts Azurite and the Cosmos server, runs ``dicomweb serve`` against them, makes a
tiled JPEG instance of at least 1 GB / 20,000 frames, and measures in the same run:

* STOW-RS (single part) MB/s vs a raw parallel ``upload_blob`` of the same file;
* peak RSS of the service after a small and after the large instance;
* single-frame GET latency and throughput, random frames and viewer-like bursts of
  6×4 neighbouring tiles, at 1 and 16 concurrent clients, vs raw ranged reads of the
  same byte ranges from the same Azurite.

Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_core.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import aiohttp
import httpx
from azure.storage.blob import BlobServiceClient, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb.dicom.frames import FrameIndex  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import Server, instance_blob, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, make_large_instance  # noqa: E402

SLIM_ACCEPT = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
BURST_COLUMNS, BURST_ROWS = 6, 4
#: Requests one viewer keeps in flight (a browser's connections per host).
VIEWER_CONNECTIONS = 6
MB = 1_000_000


@dataclass
class Result:
    """Latencies (seconds) of one scenario and its wall time."""

    latencies: list[float]
    seconds: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[18] * 1000

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] * 1000

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds


def file_chunks(path: Path, size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError("no VmHWM")


def stow(server: Server, slide: SlideFile) -> float:
    """Store ``slide`` with single-part STOW-RS; seconds taken."""
    started = time.perf_counter()
    response = httpx.post(
        f"{server.base_url}/studies", content=file_chunks(slide.path), timeout=3600,
        headers={"content-type": "application/dicom", "content-length": str(slide.path.stat().st_size)},
    )
    response.raise_for_status()
    return time.perf_counter() - started


def raw_upload(settings: dict[str, str], path: Path) -> float:
    """Upload ``path`` with the SDK's parallel ``upload_blob`` (same block size and concurrency); seconds."""
    service = BlobServiceClient.from_connection_string(
        settings["DICOMWEB_STORAGE_CONNECTION_STRING"], max_block_size=8 * 1024 * 1024, max_single_put_size=8 * 1024 * 1024
    )
    container = service.get_container_client("bench-raw")
    if not container.exists():
        container.create_container()
    started = time.perf_counter()
    with path.open("rb") as handle:
        container.upload_blob(path.name, handle, length=path.stat().st_size, overwrite=True, max_concurrency=4)
    elapsed = time.perf_counter() - started
    container.delete_blob(path.name)
    return elapsed


async def run_clients(jobs: list[list[list[int]]], fetch: Callable[[int], Awaitable[None]]) -> Result:
    """Each client runs its bursts one after another; a burst's frames go ``VIEWER_CONNECTIONS`` at a time."""
    latencies: list[float] = []

    async def timed(number: int, slots: asyncio.Semaphore) -> None:
        async with slots:
            started = time.perf_counter()
            await fetch(number)
            latencies.append(time.perf_counter() - started)

    async def client(bursts: list[list[int]]) -> None:
        slots = asyncio.Semaphore(VIEWER_CONNECTIONS)
        for burst in bursts:
            await asyncio.gather(*(timed(n, slots) for n in burst))

    started = time.perf_counter()
    await asyncio.gather(*(client(bursts) for bursts in jobs))
    return Result(latencies, time.perf_counter() - started)


def plan(index: FrameIndex, columns: int, rng: random.Random, randoms: tuple[int, int], bursts: tuple[int, int]
         ) -> dict[str, list[list[list[int]]]]:
    """Frame numbers per scenario and client, never repeating a frame across scenarios (cold caches)."""
    count = len(index)
    rows = count // columns
    blocks = [(c, r) for r in range(0, rows - BURST_ROWS + 1, BURST_ROWS)
              for c in range(0, columns - BURST_COLUMNS + 1, BURST_COLUMNS)]
    rng.shuffle(blocks)
    used: set[int] = set()
    scenarios: dict[str, list[list[list[int]]]] = {}
    for clients, per_client in ((1, bursts[0]), (16, bursts[1])):
        take = [blocks.pop() for _ in range(clients * per_client)]
        jobs = []
        for client in range(clients):
            mine = []
            for c, r in take[client * per_client : (client + 1) * per_client]:
                burst = [1 + (r + dr) * columns + c + dc for dr in range(BURST_ROWS) for dc in range(BURST_COLUMNS)]
                centre = (BURST_COLUMNS - 1) / 2, (BURST_ROWS - 1) / 2
                burst.sort(key=lambda n: math.dist(((n - 1) % columns - c, (n - 1) // columns - r), centre))
                used.update(burst)
                mine.append(burst)
            jobs.append(mine)
        scenarios[f"burst x{clients}"] = jobs
    free = [n for n in range(1, count + 1) if n not in used]
    rng.shuffle(free)
    for clients, total in ((1, randoms[0]), (16, randoms[1])):
        picked = [free.pop() for _ in range(total)]
        scenarios[f"random x{clients}"] = [[[n] for n in picked[i::clients]] for i in range(clients)]
    return scenarios


async def frame_reads(server: Server, settings: dict[str, str], slide: SlideFile, index: FrameIndex, columns: int,
                      quick: bool) -> dict[str, dict[str, Result]]:
    """Every scenario against the service and against raw ranged reads of the same bytes."""
    url = f"{server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}/frames/"
    blob_name = instance_blob(settings, slide.study_uid, slide.series_uid, slide.sop_uid)
    scale = 4 if quick else 1
    scenarios = plan(index, columns, random.Random(7), (400 // scale, 3200 // scale), (24 // scale, 16 // scale))
    results: dict[str, dict[str, Result]] = {}
    # The same HTTP stack on both sides: the Azure SDK's aio transport is aiohttp too.
    connector = aiohttp.TCPConnector(limit=16 * VIEWER_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as http, AsyncBlobServiceClient.from_connection_string(
        settings["DICOMWEB_STORAGE_CONNECTION_STRING"]
    ) as blobs:
        blob = blobs.get_blob_client("dicom-instances", blob_name)
        sas = generate_blob_sas(blob.account_name, blob.container_name, blob.blob_name,
                                account_key=blobs.credential.account_key, permission="r",
                                expiry=datetime.now(timezone.utc) + timedelta(hours=2))

        async def ours(number: int) -> None:
            async with http.get(url + str(number), headers={"accept": SLIM_ACCEPT}) as response:
                assert response.status == 200
                assert len(await response.read()) > index.span(number)[1]

        async def raw(number: int) -> None:
            offset, length = index.span(number)
            downloader = await blob.download_blob(offset=offset, length=length)
            assert len(await downloader.readall()) == length

        async def raw_http(number: int) -> None:
            offset, length = index.span(number)
            headers = {"range": f"bytes={offset}-{offset + length - 1}"}
            async with http.get(f"{blob.url}?{sas}", headers=headers) as response:
                assert response.status == 206
                assert len(await response.read()) == length

        for warm_up in (ours, raw, raw_http):
            await run_clients([[[n] for n in range(1, 50)]], warm_up)
        for name, jobs in scenarios.items():
            results[name] = {"raw": await run_clients(jobs, raw), "raw-http": await run_clients(jobs, raw_http),
                             "ours": await run_clients(jobs, ours)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--frame-bytes", type=int, default=54000)
    parser.add_argument("--quick", action="store_true", help="fewer requests (for a smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        # STOW of a whole 1 GB instance: the body limit raised as FUNCTIONS_REQUEST_BODY_SIZE_LIMIT allows on Flex.
        server = start_server(settings, work, DICOMWEB_MAX_REQUEST_MB="8192")
        try:
            small = make_large_instance(work / "small.dcm", frames=max(args.frames // 5, 1), frame_bytes=args.frame_bytes)
            stow(server, small)
            rss_small = peak_rss_mb(server.process.pid)
            small.path.unlink()
            started = time.perf_counter()
            slide = make_large_instance(work / "large.dcm", frames=args.frames, frame_bytes=args.frame_bytes)
            generate_s = time.perf_counter() - started
            size = slide.path.stat().st_size
            # Azurite writes to disk: flush before each run, and time the raw upload before and after ours.
            os.sync()
            raw_before = raw_upload(settings, slide.path)
            os.sync()
            stow_s = stow(server, slide)
            os.sync()
            raw_s = (raw_before + raw_upload(settings, slide.path)) / 2
            rss_large = peak_rss_mb(server.process.pid)
            sidecar = BlobServiceClient.from_connection_string(settings["DICOMWEB_STORAGE_CONNECTION_STRING"]).get_blob_client(
                "dicom-sidecars", instance_blob(settings, slide.study_uid, slide.series_uid, slide.sop_uid)
                .replace(".dcm", ".frames")).download_blob().readall()
            index = FrameIndex.from_bytes(sidecar)
            columns = math.ceil(math.sqrt(args.frames))
            reads = asyncio.run(frame_reads(server, settings, slide, index, columns, args.quick))
            rss_end = peak_rss_mb(server.process.pid)
        finally:
            server.stop()
            emulators.stop()
    report(size, args.frames, generate_s, raw_s, stow_s, rss_small, rss_large, rss_end, reads)


def report(size: int, frames: int, generate_s: float, raw_s: float, stow_s: float, rss_small: float, rss_large: float,
           rss_end: float, reads: dict[str, dict[str, Result]]) -> None:
    """The table and the JSON line."""
    stow_mbs, raw_mbs = size / MB / stow_s, size / MB / raw_s
    figures: dict[str, object] = {
        "instance_mb": round(size / MB, 1), "frames": frames, "generate_s": round(generate_s, 1),
        "stow_mb_s": round(stow_mbs, 1), "raw_upload_mb_s": round(raw_mbs, 1), "stow_ratio": round(stow_mbs / raw_mbs, 2),
        "peak_rss_mb_after_small": round(rss_small, 1), "peak_rss_mb_after_large": round(rss_large, 1),
        "peak_rss_mb_end": round(rss_end, 1),
    }
    print(f"\ninstance {size / MB:.0f} MB, {frames} frames (generated in {generate_s:.1f} s)")
    print(f"STOW-RS single part: {stow_mbs:.0f} MB/s; raw parallel upload_blob {raw_mbs:.0f} MB/s; "
          f"ratio {stow_mbs / raw_mbs:.2f} (target >= 0.8)")
    print(f"service peak RSS: {rss_small:.0f} MB after a {size / 5 / MB:.0f} MB instance, {rss_large:.0f} MB after "
          f"the {size / MB:.0f} MB one, {rss_end:.0f} MB after the frame reads (target <= 300)")
    print("\nraw = the Azure SDK's download_blob(offset, length); raw-http = a plain GET with Range and a SAS")
    print(f"{'scenario':<12}{'':>9}{'p50 ms':>9}{'p95 ms':>9}{'frames/s':>10}   vs raw p50 / frames/s   vs raw-http")
    for name, pair in reads.items():
        ours, raw, plain = pair["ours"], pair["raw"], pair["raw-http"]
        for label, result in (("raw", raw), ("raw-http", plain), ("ours", ours)):
            ratio = ""
            if label == "ours":
                ratio = (f"   {result.p50_ms / raw.p50_ms:>8.2f} / {result.per_second / raw.per_second:.2f}"
                         f"{result.p50_ms / plain.p50_ms:>15.2f} / {result.per_second / plain.per_second:.2f}")
            print(f"{name:<12}{label:>9}{result.p50_ms:>9.2f}{result.p95_ms:>9.2f}{result.per_second:>10.0f}{ratio}")
        key = name.replace(" ", "_")
        figures[f"{key}_p50_ms"] = round(ours.p50_ms, 2)
        figures[f"{key}_p95_ms"] = round(ours.p95_ms, 2)
        figures[f"{key}_frames_s"] = round(ours.per_second)
        figures[f"{key}_raw_p50_ms"] = round(raw.p50_ms, 2)
        figures[f"{key}_raw_frames_s"] = round(raw.per_second)
        figures[f"{key}_p50_ratio"] = round(ours.p50_ms / raw.p50_ms, 2)
        figures[f"{key}_frames_s_ratio"] = round(ours.per_second / raw.per_second, 2)
        figures[f"{key}_raw_http_p50_ms"] = round(plain.p50_ms, 2)
        figures[f"{key}_raw_http_frames_s"] = round(plain.per_second)
    print("targets: random x1 p50 ratio <= 1.3; burst x16 frames/s ratio >= 1.0")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
