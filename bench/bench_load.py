"""Load with a hostile client: 32 clients for 60 s mixing frames, metadata, QIDO, STOW and DELETE,
first alone (the reference), then with one more client sending, in a loop, the hostile requests
issue 10 measured (50,000 empty parts, 60 MB of zero bytes, a 4 GB Basic Offset Table, a flood
of fragments, 600-level nesting, malformed values, nine-wildcard patterns, 5,000-entry frame
lists, frame numbers of 5,000 digits or `²`, non-Latin-1 and CR LF parameters, an overflowing
change-feed time).

Targets: 0 5xx in both phases (the hostile requests all get 4xx or 202); p99 of frame GETs with
the hostile client ≤ 3× its p99 without; the worker's RSS stays under 1.5 GB and flat (its
mean over the last third of the hostile phase ≤ 1.25× its mean over the first third).
Starts Azurite, the Cosmos server and ``dicomweb serve``. Prints a table and one JSON line.
Run: ``.venv/bin/python bench/bench_load.py`` (``--seconds N``, ``--clients N``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, copy_instance, make_slide  # noqa: E402

RSS_BOUND = 1.5 * 1024**3
DICOM = {"content-type": "application/dicom"}
FRAMES_ACCEPT = {"accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Load:
    """The mixed workload of ``clients`` clients against one slide; latencies and statuses per kind."""

    def __init__(self, base: str, slide: list[SlideFile], spare: list[bytes], clients: int, salt: int) -> None:
        self.base, self.slide, self.spare, self.clients, self.salt = base, slide, spare, clients, salt
        self.latency: dict[str, list[float]] = {}
        self.statuses: dict[str, dict[int, int]] = {}

    def note(self, kind: str, status: int, seconds: float) -> None:
        self.latency.setdefault(kind, []).append(seconds)
        counts = self.statuses.setdefault(kind, {})
        counts[status] = counts.get(status, 0) + 1

    async def client(self, number: int, deadline: float) -> None:
        rng = random.Random(self.salt * 1000 + number)
        mine: list[SlideFile] = []
        level = self.slide[0]
        url = f"{self.base}/studies/{level.study_uid}/series/{level.series_uid}/instances/{level.sop_uid}"
        async with httpx.AsyncClient(timeout=120) as http:
            while time.monotonic() < deadline:
                pick = rng.random()
                started = time.perf_counter()
                if pick < 0.75:
                    kind = "frame"
                    response = await http.get(f"{url}/frames/{rng.randint(1, level.number_of_frames)}",
                                              headers=FRAMES_ACCEPT)
                elif pick < 0.85:
                    kind = "metadata"
                    response = await http.get(f"{self.base}/studies/{level.study_uid}/series/{level.series_uid}"
                                              "/metadata")
                elif pick < 0.93:
                    kind = "qido"
                    response = await http.get(f"{self.base}/studies", params={"PatientID": "P-1", "limit": "10"})
                elif pick < 0.97 or not mine:
                    kind = "stow"
                    body = self.spare[(number * 7919 + len(mine)) % len(self.spare)]
                    data = _fresh_uid(body, rng)
                    response = await http.post(f"{self.base}/studies", content=data, headers=DICOM)
                    if response.status_code == 200:
                        item = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
                        mine.append(item)  # type: ignore[arg-type]
                else:
                    kind = "delete"
                    response = await http.delete(str(mine.pop(0)))
                self.note(kind, response.status_code, time.perf_counter() - started)

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(self.client(n, deadline) for n in range(self.clients)))


def _fresh_uid(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a new SOP Instance UID of the same length (so nothing else moves)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    old = ds.SOPInstanceUID.encode()
    new = old[: len(old) - 12] + f"{rng.randrange(10**12):012d}".encode()
    return data.replace(old, new)


def hostile_requests(base: str, slide: list[SlideFile]) -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """(name, method, url, headers, body) of every hostile request."""
    level = slide[0]
    instance = f"{base}/studies/{level.study_uid}/series/{level.series_uid}/instances/{level.sop_uid}"
    data = level.path.read_bytes()
    pixel = data.find(b"\xe0\x7f\x10\x00")
    bot = data.find(b"\xfe\xff\x00\xe0", pixel)
    huge_bot = data[:bot] + b"\xfe\xff\x00\xe0" + struct.pack("<I", 0xFFFFFFF0) + bytes(32 * 1024 * 1024)
    flood = data[:bot] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + (b"\xfe\xff\x00\xe0\x02\x00\x00\x00\xff\xd8") * 800_000
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    header = data[:pixel]
    nested = (struct.pack("<HH2sHI", 0x0040, 0xA168, b"SQ", 0, 0xFFFFFFFF) + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 600
    parts = b"".join(b"--x\r\nContent-Type: application/dicom\r\n\r\n\r\n" for _ in range(50_000)) + b"--x--\r\n"
    multipart = {"content-type": 'multipart/related; type="application/dicom"; boundary=x'}
    key = struct.pack("<HH", 0x0028, 0x0008)
    bad_frames = data.replace(key + b"IS" + struct.pack("<H", len(str(ds.NumberOfFrames)) + len(str(ds.NumberOfFrames)) % 2),
                              key + b"IS" + struct.pack("<H", 4) + b"abc ", 1)
    return [
        ("50,000 empty parts", "POST", f"{base}/studies", multipart, parts),
        ("60 MB of zero bytes", "POST", f"{base}/studies", DICOM, bytes(60 * 1024 * 1024)),
        ("4 GB offset table", "POST", f"{base}/studies", DICOM, huge_bot),
        ("fragment flood", "POST", f"{base}/studies", DICOM, flood),
        ("600-level nesting", "POST", f"{base}/studies", DICOM, header[: header.rfind(b"\x08\x00\x18\x00")] + nested),
        ("NumberOfFrames abc", "POST", f"{base}/studies", DICOM, bad_frames),
        ("nine wildcards", "GET", f"{base}/studies?PatientName=*A*A*A*A*A*A*A*A*B", {}, b""),
        ("5,000 frames", "GET", f"{instance}/frames/{','.join(['1'] * 5000)}", FRAMES_ACCEPT, b""),
        ("frame ²", "GET", f"{instance}/frames/{quote('²')}", {}, b""),
        ("5,000-digit frame", "GET", f"{instance}/frames/{'9' * 5000}", {}, b""),
        ("limit of 2,000 digits", "GET", f"{base}/studies?limit={'9' * 2000}", {}, b""),
        ("non-Latin-1 parameter", "GET", f"{base}/studies?{quote('名前')}={quote('値')}", {}, b""),
        ("CR LF in a name", "GET", f"{base}/studies?{quote(chr(13) + chr(10) + 'x')}=1", {}, b""),
        ("NUL parameter", "GET", f"{base}/studies?_%00=1", {}, b""),
        ("change feed overflow", "GET", f"{base}/changefeed?startTime=9999-12-31T23:59:59-23:59", {}, b""),
        ("UID with a newline", "GET", f"{base}/studies/1.2.3%0A/series", {}, b""),
    ]


async def hostile(requests: list[tuple[str, str, str, dict[str, str], bytes]], deadline: float,
                  seen: dict[str, dict[int, int]]) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while time.monotonic() < deadline:
            for name, method, url, headers, body in requests:
                if time.monotonic() >= deadline:
                    return
                response = await http.request(method, url, headers=headers, content=body or None)
                counts = seen.setdefault(name, {})
                counts[response.status_code] = counts.get(response.status_code, 0) + 1


def sample_rss(pid: int, stop: threading.Event, samples: list[float]) -> None:
    process = psutil.Process(pid)
    while not stop.wait(0.5):
        samples.append(process.memory_info().rss)


async def phase(base: str, slide: list[SlideFile], spare: list[bytes], clients: int, seconds: float,
                pid: int, with_hostile: bool) -> tuple[Load, dict[str, dict[int, int]], list[float]]:
    load = Load(base, slide, spare, clients, salt=int(with_hostile))
    seen: dict[str, dict[int, int]] = {}
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, stop, samples))
    sampler.start()
    tasks = [load.run(seconds)]
    if with_hostile:
        tasks.append(hostile(hostile_requests(base, slide), time.monotonic() + seconds, seen))
    try:
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        sampler.join()
    return load, seen, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        slide = make_slide(work / "slide", levels=2, base_size=(2048, 1536), associated=False)
        small = make_slide(work / "small", levels=1, base_size=(256, 256), associated=False)[0]
        spare = [copy_instance(small, work / f"s{n}.dcm").path.read_bytes() for n in range(8)]
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        server = start_server(fresh_settings(settings), work)
        figures: dict[str, object] = {"clients": args.clients, "seconds": args.seconds}
        try:
            for file in slide:
                assert httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(), headers=DICOM,
                                  timeout=120).status_code == 200
            results = {}
            for name, with_hostile in (("reference", False), ("hostile", True)):
                results[name] = asyncio.run(phase(server.base_url, slide, spare, args.clients, args.seconds,
                                                  server.process.pid, with_hostile))
        finally:
            server.stop()
            emulators.stop()
    print(f"\n{args.clients} clients for {args.seconds:.0f} s per phase")
    print(f"{'phase':<11}{'kind':<10}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    fives = 0
    for name, (load, seen, samples) in results.items():
        for kind, values in sorted(load.latency.items()):
            statuses = load.statuses[kind]
            fives += sum(n for status, n in statuses.items() if status >= 500)
            print(f"{name:<11}{kind:<10}{len(values):>9}{percentile(values, 0.5) * 1000:>9.1f}"
                  f"{percentile(values, 0.99) * 1000:>9.1f}  {statuses}")
            figures[f"{name}_{kind}_p50_ms"] = round(percentile(values, 0.5) * 1000, 1)
            figures[f"{name}_{kind}_p99_ms"] = round(percentile(values, 0.99) * 1000, 1)
            figures[f"{name}_{kind}_requests"] = len(values)
        third = max(len(samples) // 3, 1)
        figures[f"{name}_rss_max_mb"] = round(max(samples) / 2**20)
        figures[f"{name}_rss_flat_ratio"] = round((sum(samples[-third:]) / third) / (sum(samples[:third]) / third), 2)
    hostile_fives = 0
    print("hostile requests:")
    for what, statuses in results["hostile"][1].items():
        hostile_fives += sum(n for status, n in statuses.items() if status >= 500)
        print(f"  {what:<24}{statuses}")
    figures["5xx"] = fives + hostile_fives
    ratio = figures["hostile_frame_p99_ms"] / figures["reference_frame_p99_ms"]  # type: ignore[operator]
    figures["frame_p99_ratio"] = round(ratio, 2)
    print(f"5xx: {fives + hostile_fives} (target 0); frame p99 with the hostile client: {ratio:.2f}x (target <= 3x); "
          f"RSS max {figures['hostile_rss_max_mb']} MB (bound {RSS_BOUND / 2**20:.0f} MB), "
          f"flat ratio {figures['hostile_rss_flat_ratio']} (target <= 1.25)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
