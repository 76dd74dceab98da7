"""Archive benchmark: QIDO with availability, and the time from a rehydration request to the first frame.

1. QIDO of one series of ``--instances`` instances (1,000), timed while every instance is online (their
   documents carry no availability reading: the reference) and again after half their blobs went to the
   Archive tier and the index learned it from the blob events (every document then carries a reading,
   the summaries count the offline ones, and the answer says OFFLINE or ONLINE per instance). Target:
   p50 with availability ≤ 1.1× without: availability comes from the index, never from Blob at query time.
2. A series of 10 instances in Archive, rehydration delay 0 in the stand-in: the time from
   ``POST …/series/{x}/rehydrate`` to the first frame served (polling one frame of each instance), and
   to a frame of every instance. Target: first frame ≤ 5 s.

Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_archive.py`` (``--instances N``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.wsi_factory import SlideFile, copy_instance, make_slide  # noqa: E402

OCTETS = {"accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


async def store_all(base: str, files: list[SlideFile], concurrency: int = 8) -> None:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(file: SlideFile) -> None:
            async with slots:
                response = await client.post(f"{base}/studies", content=file.path.read_bytes(),
                                             headers={"content-type": "application/dicom"})
                response.raise_for_status()

        await asyncio.gather(*(one(f) for f in files))


def series_of(directory: Path, count: int) -> list[SlideFile]:
    """``count`` small single-level instances in one series."""
    (source,) = make_slide(directory / "source", levels=1, base_size=(256, 256), associated=False)
    return [copy_instance(source, directory / f"{n}.dcm") for n in range(count)]


def archive(settings: dict[str, str], files: list[SlideFile]) -> None:
    """Move the instances' blobs to the Archive tier, as the lifecycle policy does."""
    container = BlobServiceClient.from_connection_string(
        settings["DICOMWEB_STORAGE_CONNECTION_STRING"]).get_container_client("dicom-instances")
    for file in files:
        (name,) = [b.name for b in container.list_blobs(
            name_starts_with=f"{file.study_uid}/{file.series_uid}/{file.sop_uid}/")]
        container.get_blob_client(name).set_standard_blob_tier("Archive")


def offline_count(client: httpx.Client, path: str) -> int:
    return sum(i["00080056"]["Value"][0] == "OFFLINE" for i in client.get(path).json())


def wait_until(check: object, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def timed(client: httpx.Client, path: str, rounds: int) -> list[float]:
    latencies = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-archive-") as tmp:
        work = Path(tmp)
        emulators = Emulators(work / "emulators", rehydrate_seconds=0)
        settings = emulators.start()
        server = start_server(settings, work)
        figures: dict[str, object] = {"instances": args.instances}
        try:
            many = series_of(work / "many", args.instances)
            asyncio.run(store_all(server.base_url, many))
            path = f"studies/{many[0].study_uid}/series/{many[0].series_uid}/instances?limit={args.instances}"
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                assert len(client.get(path).json()) == args.instances
                timed(client, path, 3)
                without = timed(client, path, args.rounds)
                archive(settings, many[::2])
                started = time.perf_counter()
                wait_until(lambda: offline_count(client, path) == len(many[::2]))
                figures["events_learned_s"] = round(time.perf_counter() - started, 1)
                timed(client, path, 3)
                with_availability = timed(client, path, args.rounds)
                p50 = statistics.median(without) * 1000, statistics.median(with_availability) * 1000
                figures.update(qido_p50_ms_without=round(p50[0], 1), qido_p50_ms_with=round(p50[1], 1),
                               qido_ratio=round(p50[1] / p50[0], 2))

                ten = series_of(work / "ten", 10)
                asyncio.run(store_all(server.base_url, ten))
                archive(settings, ten)
                series = f"studies/{ten[0].study_uid}/series/{ten[0].series_uid}"
                wait_until(lambda: offline_count(client, f"{series}/instances") == 10)
                frames = {f.sop_uid: f"{series}/instances/{f.sop_uid}/frames/1" for f in ten}
                started = time.perf_counter()
                asked = client.post(f"{series}/rehydrate", json={"priority": "High"})
                assert asked.status_code == 202, asked.text
                first = None
                waiting = set(frames)
                while waiting:
                    for sop in sorted(waiting):
                        if client.get(frames[sop], headers=OCTETS).status_code == 200:
                            waiting.discard(sop)
                            first = first or time.perf_counter() - started
                    if time.perf_counter() - started > 120:
                        raise RuntimeError("frames did not come back")
                every = time.perf_counter() - started
                figures.update(rehydrate_to_first_frame_s=round(first or every, 2), rehydrate_to_all_frames_s=round(
                    every, 2), post_ms=round(asked.elapsed.total_seconds() * 1000, 1))
        finally:
            server.stop()
            emulators.stop()
    print(f"\nQIDO of {args.instances} instances, p50: {figures['qido_p50_ms_without']} ms all online, "
          f"{figures['qido_p50_ms_with']} ms with half OFFLINE ({figures['qido_ratio']}x, target <= 1.1x; "
          f"the index learned the tiers in {figures['events_learned_s']} s)")
    print(f"POST rehydrate ({figures['post_ms']} ms) to the first frame: {figures['rehydrate_to_first_frame_s']} s "
          f"(target <= 5 s), to a frame of all 10: {figures['rehydrate_to_all_frames_s']} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
