"""Summaries of a series of 100,000 instances: exact counts, stores still 200, documents far below 2 MB.

Projects N instance documents into one series with the service's own projection
(:func:`dicomweb.generations.project`, one transactional batch each, 32 at once: what N
stores do to the index, without N files), then stores instances of that series through
STOW-RS with ``dicomweb serve`` and reads the series count back. Reports the
series and study summary sizes (bytes of JSON, the way Cosmos DB measures its 2 MB item
limit) and the STOW time into the large series against the same stores into an empty one,
measured in the same run. Targets: counts exact, every store 200, each summary < 64 KiB,
STOW into the 100,000-instance series ≤ 1.2× the empty one.
Run: ``.venv/bin/python bench/bench_summaries.py`` (``--instances N``).
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
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomweb import records  # noqa: E402
from dicomweb.config import Settings  # noqa: E402
from dicomweb.dicom.part10 import Part10Parser  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from dicomweb.service import Service  # noqa: E402
from dicomweb.storage.naming import new_generation  # noqa: E402
from tests.conftest import fresh_settings, start_server  # noqa: E402
from tests.test_generations import project_copies  # noqa: E402
from tests.wsi_factory import SlideFile, copy_instance, make_slide  # noqa: E402

STORES = 20


async def project_many(settings: Settings, source: SlideFile, count: int) -> float:
    """Project ``count`` instance documents into ``source``'s series; seconds taken."""
    parser = Part10Parser(settings.limits)
    parser.feed(source.path.read_bytes())
    parser.close()
    assert parser.header is not None
    template = records.make_sidecars(parser, records.describe(parser.header), new_generation()).sidecar
    service = await Service.create(settings)
    started = time.perf_counter()
    try:
        for first in range(0, count, 2000):
            await project_copies(service, template, range(first, min(first + 2000, count)))
    finally:
        await service.close()
    return time.perf_counter() - started


async def summary_bytes(settings: Settings, file: SlideFile) -> dict[str, int]:
    """Bytes of the series and study summaries as Cosmos DB measures an item (JSON, system properties left out)."""
    service = await Service.create(settings)
    try:
        found = {level: await service.index.find(file.study_uid, level, uid)
                 for level, uid in (("series", file.series_uid), ("study", file.study_uid))}
        return {level: len(json.dumps({k: v for k, v in doc.items() if not k.startswith("_")}).encode())
                for level, doc in found.items() if doc is not None}
    finally:
        await service.close()


def store(base: str, files: list[SlideFile]) -> list[float]:
    """Milliseconds per STOW, each checked to answer 200."""
    times = []
    with httpx.Client(timeout=120) as http:
        for file in files:
            started = time.perf_counter()
            response = http.post(f"{base}/studies", content=file.path.read_bytes(),
                                 headers={"content-type": "application/dicom"})
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    return times


async def series_count(settings: Settings, file: SlideFile) -> int:
    """NumberOfSeriesRelatedInstances as QIDO-RS returns it: the series summary's count (read by id here: the local
    Cosmos server answers a search by scanning all 100,000 documents, which takes longer than the client waits)."""
    service = await Service.create(settings)
    try:
        summary = await service.index.find(file.study_uid, "series", file.series_uid)
        return int(summary["numberOfInstances"]) if summary else 0
    finally:
        await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        source = make_slide(work / "source", levels=1, base_size=(256, 256), associated=False)[0]
        emulators = Emulators(work / "emulators")
        emulators.start()
        try:
            env = fresh_settings(emulators.settings())
            settings = Settings.from_env(env)
            elsewhere = generate_uid(), generate_uid()
            empty_series = [copy_instance(source, work / f"e{n}.dcm", study_uid=elsewhere[0], series_uid=elsewhere[1])
                            for n in range(STORES)]
            large_series = [copy_instance(source, work / f"l{n}.dcm") for n in range(STORES)]
            server = start_server(env, work)  # before the documents: a local server scans them all per query
            try:
                projected = asyncio.run(project_many(settings, source, args.instances))
                into_empty = store(server.base_url, empty_series)
                into_large = store(server.base_url, large_series)
                counted = asyncio.run(series_count(settings, source))
                sizes = asyncio.run(summary_bytes(settings, source))
            finally:
                server.stop()
        finally:
            emulators.stop()
    ratio = statistics.median(into_large) / statistics.median(into_empty)
    figures = {"instances": args.instances, "projected_per_s": round(args.instances / projected),
               "counted": counted, "expected": args.instances + STORES, "series_bytes": sizes.get("series"),
               "study_bytes": sizes.get("study"), "stow_ms_empty_p50": round(statistics.median(into_empty), 1),
               "stow_ms_large_p50": round(statistics.median(into_large), 1), "ratio_large_vs_empty": round(ratio, 2)}
    print(f"\n{args.instances} instance documents projected into one series ({figures['projected_per_s']}/s)")
    print(f"series counts {counted} (expected {args.instances + STORES}); summaries: series "
          f"{sizes.get('series')} B, study {sizes.get('study')} B (Cosmos item limit 2,097,152 B; target < 65,536)")
    print(f"STOW p50 into it {figures['stow_ms_large_p50']} ms vs into an empty series "
          f"{figures['stow_ms_empty_p50']} ms: {ratio:.2f}x (target <= 1.2x), every store 200")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
