"""QIDO-RS benchmark: search latency with 1,000 studies indexed.

Starts Azurite, the Cosmos server and ``dicomweb serve``, stores ``--studies``
studies (every fifth a whole-slide study, the rest CT) through STOW-RS, then times
the three searches viewers send most: Slim's worklist ``/studies?ModalitiesInStudy=SM``,
a fuzzy PatientName search, and wsidicom's ``/studies/{s}/instances?00080016=…``.
Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_qido.py``.

The local Cosmos server scans every document for every query (no index), so the
cross-study searches here measure that scan; in Cosmos DB the same queries are index
lookups. The single-study search is a single-partition query in both.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.wsi_factory import make_image, make_slide  # noqa: E402

WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SURNAMES = ("Smith", "Jones", "Garcia", "Müller", "Rossi", "Dubois", "Tanaka", "Nowak", "Silva", "Kim")


async def store_all(base: str, files: list[Path], concurrency: int = 8) -> None:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(path: Path) -> None:
            async with slots:
                response = await client.post(f"{base}/studies", content=path.read_bytes(),
                                             headers={"content-type": "application/dicom"})
                response.raise_for_status()

        await asyncio.gather(*(one(p) for p in files))


def corpus(directory: Path, studies: int) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files of ``studies`` studies, and (study, series) of each slide."""
    files, slides = [], []
    for n in range(studies):
        study = generate_uid()
        name = f"{SURNAMES[n % len(SURNAMES)]}^Patient{n}"
        if n % 5 == 0:
            for file in make_slide(directory / f"s{n}", levels=1, base_size=(256, 256), associated=False,
                                   study_uid=study, patient_id=f"P{n}", patient_name=name):
                files.append(file.path)
                slides.append((study, file.series_uid))
        else:
            files.append(make_image(directory / f"ct{n}.dcm", modality="CT", study_uid=study,
                                    series_uid=generate_uid(), patient_id=f"P{n}", patient_name=name).path)
    return files, slides


def timed(client: httpx.Client, url: str, rounds: int) -> tuple[list[float], int]:
    latencies, count = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(url)
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        count = len(response.json())
    return latencies, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-qido-") as tmp:
        work = Path(tmp)
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        server = start_server(settings, work)
        try:
            files, slides = corpus(work, args.studies)
            started = time.perf_counter()
            asyncio.run(store_all(server.base_url, files))
            stow_s = time.perf_counter() - started
            study, series = slides[len(slides) // 2]
            searches = {
                "worklist /studies?ModalitiesInStudy=SM": "studies?ModalitiesInStudy=SM&limit=1000",
                "fuzzy PatientName=smi": "studies?PatientName=smi&fuzzymatching=true&limit=1000",
                "wsidicom /studies/{s}/instances": (
                    f"studies/{study}/instances?00080016={WSI_CLASS}&00080060=SM&0020000E={series}"
                    "&includefield=AvailableTransferSyntaxUID"),
            }
            figures: dict[str, object] = {"studies": args.studies, "instances": len(files),
                                          "stow_instances_per_s": round(len(files) / stow_s, 1)}
            print(f"\n{args.studies} studies, {len(files)} instances stored in {stow_s:.1f} s")
            print(f"{'search':<40}{'matches':>8}{'p50 ms':>9}{'p95 ms':>9}")
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                for label, path in searches.items():
                    timed(client, path, 2)
                    latencies, count = timed(client, path, args.rounds)
                    p50 = statistics.median(latencies) * 1000
                    p95 = statistics.quantiles(latencies, n=20)[18] * 1000
                    print(f"{label:<40}{count:>8}{p50:>9.1f}{p95:>9.1f}")
                    key = label.split()[0]
                    figures.update({f"{key}_matches": count, f"{key}_p50_ms": round(p50, 1),
                                    f"{key}_p95_ms": round(p95, 1)})
            print(json.dumps(figures))
        finally:
            server.stop()
            emulators.stop()


if __name__ == "__main__":
    main()
