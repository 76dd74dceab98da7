"""Viewer-grade retrieval benchmark: rendered frames, transcodes, thumbnails, revalidation, big metadata.

Starts Azurite and the Cosmos server, runs ``dicomweb serve`` against them, stores the
test data it makes, and measures in the same run:

* rendered JPEG of native frames and JPEG → native transcodes at 16 concurrent clients,
  for 256², 512² and 1024² frames: p50 and frames/s, against decoding + encoding the same
  frames with imagecodecs in-process on as many threads as the service's CPU pool
  (target ≥ 0.7×; the HTTP client runs on the same two cores, which bounds small frames);
* the series thumbnail of a slide whose base level is 4 GB (100,000 frames), warm p50
  (target ≤ 50 ms), and the service's peak RSS while it renders a 1,024-tile region of
  that level and streams its transcode (to HTJ2K: native pixels of that level are beyond the
  4 GB a DICOM element holds);
* a ``304`` revalidation of a frame against its ``200`` answer, p50;
* series metadata of a 100,000-frame TILED_SPARSE instance, warm p50, gzip and identity
  (target ≤ 50 ms).

Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_render.py``
(``--base-gb 1`` for a quicker run on a smaller base level).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import imagecodecs
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import Result, peak_rss_mb  # noqa: E402
from bench.bench_upload import upload  # noqa: E402
from dicomweb import cpu  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import Server, source_frames, start_server  # noqa: E402
from tests.wsi_factory import (  # noqa: E402
    SlideFile,
    copy_instance,
    make_large_instance,
    make_slide,
    make_sparse_instance,
)

CLIENTS = 16
MB = 1_000_000


def _url(server: Server, file: SlideFile) -> str:
    return f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"


def _stow(server: Server, files: list[SlideFile]) -> None:
    for file in files:
        httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                   headers={"content-type": "application/dicom"}, timeout=600).raise_for_status()


async def concurrent_gets(urls: list[str], headers: dict[str, str], clients: int = CLIENTS) -> Result:
    """Each URL once, ``clients`` at a time; latencies of each (aiohttp: the client costs little CPU of the two
    cores it shares with the service)."""
    latencies: list[float] = []
    queue = list(urls)

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            url = queue.pop()
            started = time.perf_counter()
            async with http.get(url, headers=headers) as response:
                body = await response.read()
                if response.status not in (200, 304):
                    raise RuntimeError(f"{url}: {response.status} {body[:300]!r}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120),
                                     auto_decompress=False) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return Result(latencies, time.perf_counter() - started)



def _reference(work: list[bytes], job) -> Result:  # noqa: ANN001 - a callable of one frame
    """``job`` over every frame in-process, on as many threads as the service's CPU pool."""
    latencies: list[float] = []

    def timed(frame: bytes) -> None:
        started = time.perf_counter()
        job(frame)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(cpu.WORKERS) as pool:
        list(pool.map(timed, work))
    return Result(latencies, time.perf_counter() - started)


def pixel_paths(server: Server, directory: Path, requests: int, tile: int) -> dict[str, tuple[Result, Result]]:
    """Rendered JPEG of native frames and JPEG → native of ``tile``² frames, each against its in-process reference."""
    native = make_slide(directory / f"native-{tile}", transfer_syntax="1.2.840.10008.1.2.1", levels=1,
                        base_size=(4096, 2048), tile_size=tile, associated=False, noise=4)[0]
    jpeg = make_slide(directory / f"jpeg-{tile}", levels=1, base_size=(4096, 2048), tile_size=tile,
                      associated=False, noise=4)[0]
    _stow(server, [native, jpeg])
    rng = random.Random(7)
    out = {}
    for name, file, path, headers, job in (
        (f"rendered JPEG of a native {tile}² frame", native, "/rendered", {"accept": "image/jpeg"},
         lambda f: imagecodecs.jpeg8_encode(np.frombuffer(f, np.uint8).reshape(tile, tile, 3), level=90)),
        (f"JPEG → native transcode, {tile}² frame", jpeg, "", {"accept": "application/octet-stream"},
         lambda f: imagecodecs.jpeg8_decode(f).tobytes()),
    ):
        frames = source_frames(file.path)
        numbers = [rng.randrange(1, len(frames) + 1) for _ in range(requests)]
        asyncio.run(concurrent_gets([f"{_url(server, file)}/frames/{n}{path}" for n in range(1, len(frames) + 1)],
                                headers))  # warm: the frames are read from Blob once
        served = asyncio.run(concurrent_gets([f"{_url(server, file)}/frames/{n}{path}" for n in numbers], headers))
        reference = _reference([frames[n - 1] for n in numbers], job)
        out[name] = (served, reference)
    return out


def revalidation(server: Server, directory: Path, requests: int) -> tuple[Result, Result]:
    (file,) = make_slide(directory / "etag", levels=1, base_size=(1024, 1024), associated=False)
    _stow(server, [file])
    url = f"{_url(server, file)}/frames/1"
    tag = httpx.get(url, headers={"accept": "image/jpeg"}).headers["etag"]
    full = asyncio.run(concurrent_gets([url] * requests, {"accept": "image/jpeg"}, clients=1))
    unchanged = asyncio.run(concurrent_gets([url] * requests, {"accept": "image/jpeg", "if-none-match": tag}, clients=1))
    return unchanged, full


def big_series(server: Server, directory: Path, base_gb: float) -> tuple[SlideFile, float, dict[str, float]]:
    """A slide whose base level is ``base_gb`` GB (100,000 frames at 4 GB) with a thumbnail image, uploaded."""
    frames = 100_000
    frame_bytes = int(base_gb * 1e9 / frames)
    base = make_large_instance(directory / "base.dcm", frames=frames, frame_bytes=frame_bytes)
    small = make_slide(directory / "small", levels=1, base_size=(2048, 1536))
    thumbnail = copy_instance(small[-1], directory / "thumbnail.dcm", study_uid=base.study_uid,
                              series_uid=base.series_uid)
    started = time.perf_counter()
    upload(server, base.path, directory / "state.json")
    upload_s = time.perf_counter() - started
    _stow(server, [thumbnail])
    url = f"{server.base_url}/studies/{base.study_uid}/series/{base.series_uid}/thumbnail"
    started = time.perf_counter()
    httpx.get(url, timeout=120).raise_for_status()
    cold = time.perf_counter() - started
    warm = asyncio.run(concurrent_gets([url] * 200, {"accept": "image/jpeg"}, clients=1))
    return base, upload_s, {"cold_ms": cold * 1000, "warm_p50_ms": warm.p50_ms}


def memory(settings: dict[str, str], directory: Path, base: SlideFile, seconds: float) -> dict[str, float]:
    """Peak RSS of a fresh ``serve`` on the same store while a 1,024-tile region of the big level renders
    and its transcode streams (a process of its own, so the peak is these answers' alone)."""
    (directory / "fresh").mkdir(exist_ok=True)
    server = start_server(settings, directory / "fresh")
    try:
        return _memory(server, base, seconds)
    finally:
        server.stop()


def _memory(server: Server, base: SlideFile, seconds: float) -> dict[str, float]:
    process = psutil.Process(server.process.pid)
    started = time.perf_counter()
    region = httpx.get(f"{_url(server, base)}/rendered?viewport=2048,2048,0,0,8192,8192", timeout=600)
    region.raise_for_status()
    render_s = time.perf_counter() - started
    streamed = 0
    started = time.perf_counter()
    # Native pixels of 100,000 tiles are ~20 GB, beyond one element's 4 GB: the transcode is to HTJ2K.
    accept = "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.201"
    with httpx.stream("GET", _url(server, base), headers={"accept": accept}, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            streamed += len(chunk)
            if time.perf_counter() - started > seconds:
                break
    transcode_s = time.perf_counter() - started
    Image.open(io.BytesIO(region.content)).verify()
    return {"render_region_s": render_s, "transcode_mb_per_s": streamed / MB / transcode_s,
            "transcode_streamed_mb": streamed / MB, "rss_mb": process.memory_info().rss / MB,
            "peak_rss_mb": peak_rss_mb(server.process.pid)}


def sparse_metadata(server: Server, directory: Path, requests: int) -> dict[str, float]:
    sparse = make_sparse_instance(directory / "sparse.dcm", 100_000)
    _stow(server, [sparse])
    url = f"{server.base_url}/studies/{sparse.study_uid}/series/{sparse.series_uid}/metadata"
    out = {"header_mb": sparse.path.stat().st_size / MB}
    for name, headers in (("gzip", {"accept-encoding": "gzip"}), ("identity", {"accept-encoding": "identity"})):
        started = time.perf_counter()
        first = httpx.get(url, headers=headers, timeout=120)
        first.raise_for_status()
        out[f"{name}_cold_ms"] = (time.perf_counter() - started) * 1000
        out[f"{name}_mb"] = len(first.content) / MB
        out[f"{name}_warm_p50_ms"] = asyncio.run(concurrent_gets([url] * requests, headers, clients=1)).p50_ms
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-gb", type=float, default=4.0, help="size of the big slide's base level")
    parser.add_argument("--requests", type=int, default=800, help="256² frame requests per pixel scenario")
    parser.add_argument("--tiles", default="256,512,1024", help="frame sizes of the pixel scenarios")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-render-") as temp:
        directory = Path(temp)
        emulators = Emulators(directory / "emulators")
        settings = emulators.start()
        server = start_server(settings, directory)
        try:
            pixels = {}
            for tile in map(int, args.tiles.split(",")):
                pixels.update(pixel_paths(server, directory, max(50, args.requests * 256**2 // tile**2), tile))
            unchanged, full = revalidation(server, directory, 300)
            metadata = sparse_metadata(server, directory, 50)
            base, upload_s, thumbnail = big_series(server, directory, args.base_gb)
            rss = memory(settings, directory, base, 30)
        except Exception:
            print(server.log.read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            server.stop()
            emulators.stop()
    rows = []
    for name, (served, reference) in pixels.items():
        ratio = served.per_second / reference.per_second
        rows.append((name, f"{served.p50_ms:.1f} ms p50, {served.per_second:.0f} frames/s at {CLIENTS} clients; "
                     f"in-process {reference.per_second:.0f} frames/s ({reference.p50_ms:.1f} ms)",
                     f"{ratio:.2f}×", "≥ 0.7×"))
    rows.append(("thumbnail of a series with a %.0f GB base level" % args.base_gb,
                 f"warm p50 {thumbnail['warm_p50_ms']:.1f} ms (first {thumbnail['cold_ms']:.0f} ms)",
                 f"{thumbnail['warm_p50_ms']:.1f} ms", "≤ 50 ms"))
    rows.append(("304 revalidation vs 200 frame", f"{unchanged.p50_ms:.2f} ms vs {full.p50_ms:.2f} ms p50",
                 f"{unchanged.p50_ms / full.p50_ms:.2f}×", "—"))
    rows.append(("series metadata, 100,000-frame TILED_SPARSE, warm",
                 f"gzip {metadata['gzip_warm_p50_ms']:.1f} ms ({metadata['gzip_mb']:.1f} MB), identity "
                 f"{metadata['identity_warm_p50_ms']:.1f} ms ({metadata['identity_mb']:.1f} MB)",
                 f"{metadata['gzip_warm_p50_ms']:.1f} ms", "≤ 50 ms"))
    rows.append(("service RSS: 1,024-tile render, streaming HTJ2K transcode",
                 f"render {rss['render_region_s']:.1f} s, transcode {rss['transcode_mb_per_s']:.0f} MB/s "
                 f"({rss['transcode_streamed_mb']:.0f} MB)", f"{rss['peak_rss_mb']:.0f} MB peak", "≤ 300 MB"))
    width = max(len(r[0]) for r in rows)
    for name, detail, figure, target in rows:
        print(f"{name:<{width}}  {figure:>10}  {target:>8}  {detail}")
    print(json.dumps({"pixels": {k: {"p50_ms": s.p50_ms, "per_second": s.per_second, "reference_per_second":
                                     r.per_second, "ratio": s.per_second / r.per_second} for k, (s, r) in pixels.items()},
                      "thumbnail": thumbnail, "upload_s": upload_s, "revalidation_p50_ms": unchanged.p50_ms,
                      "frame_p50_ms": full.p50_ms, "metadata": metadata, "memory": rss}))


if __name__ == "__main__":
    main()
