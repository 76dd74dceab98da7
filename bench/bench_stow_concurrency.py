"""STOW-RS under concurrency: 256 small instances into one series at 1, 8, 32 and 64 clients.

Starts Azurite, the Cosmos server and ``dicomweb serve``; each run gets a fresh index and
fresh containers (the local Cosmos server scans every document per query, so runs must
not inherit each other's documents). The reference, measured in the same run, is the
same 256 stores spread over 32 different studies at 32 clients: what a store costs when
no two writers share a series or a study. Target: no failure at any level, and at 32
clients one series reaches ≥ 0.8× the reference's instances/s (the summaries and the
change feed must not serialise a series). Afterwards every run's counts are checked
against what was stored. Prints a table and one JSON line.
Run: ``.venv/bin/python bench/bench_stow_concurrency.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import copy_instance, make_slide  # noqa: E402

LEVELS = (1, 8, 32, 64)
REFERENCE_CLIENTS = 32


async def store_all(base: str, bodies: list[bytes], clients: int) -> tuple[float, int]:
    """(seconds, failures) for storing ``bodies`` with ``clients`` stores in flight."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    failures = 0

    async def client() -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=300) as http:
            while not queue.empty():
                body = queue.get_nowait()
                response = await http.post(f"{base}/studies", content=body,
                                           headers={"content-type": "application/dicom"})
                failures += response.status_code != 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, failures


def counts(base: str, studies: set[str]) -> int:
    """Instances the study summaries report over ``studies``."""
    total = 0
    with httpx.Client(base_url=base, timeout=60) as http:
        for study in studies:
            (found,) = http.get(f"/studies?StudyInstanceUID={study}").json()
            total += found["00201208"]["Value"][0]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        source = make_slide(work / "source", levels=1, base_size=(256, 256), associated=False)[0]
        one_series = [copy_instance(source, work / f"a{n}.dcm") for n in range(args.instances)]
        spread_studies = [generate_uid() for _ in range(REFERENCE_CLIENTS)]
        spread = [copy_instance(source, work / f"b{n}.dcm", study_uid=spread_studies[n % REFERENCE_CLIENTS],
                                series_uid=generate_uid(entropy_srcs=[spread_studies[n % REFERENCE_CLIENTS]]))
                  for n in range(args.instances)]
        runs = [(f"one series, {c} clients", c, one_series) for c in LEVELS]
        runs.append((f"32 studies, {REFERENCE_CLIENTS} clients (reference)", REFERENCE_CLIENTS, spread))
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        figures: dict[str, object] = {"instances": args.instances, "instance_bytes": source.path.stat().st_size}
        rates: dict[str, float] = {}
        try:
            print(f"\n{args.instances} instances of {source.path.stat().st_size / 1024:.0f} KB each")
            print(f"{'run':<44}{'inst/s':>8}{'failures':>10}{'counted':>9}")
            for label, clients, files in runs:
                server = start_server(fresh_settings(settings), work)
                try:
                    bodies = [f.path.read_bytes() for f in files]
                    seconds, failures = asyncio.run(store_all(server.base_url, bodies, clients))
                    counted = counts(server.base_url, {f.study_uid for f in files})
                finally:
                    server.stop()
                rate = len(files) / seconds
                key = "reference" if "reference" in label else f"series_{clients}"
                rates[key] = rate
                figures.update({f"{key}_per_s": round(rate, 1), f"{key}_failures": failures,
                                f"{key}_counted": counted})
                print(f"{label:<44}{rate:>8.1f}{failures:>10}{counted:>9}")
        finally:
            emulators.stop()
    ratio = rates[f"series_{REFERENCE_CLIENTS}"] / rates["reference"]
    figures["ratio_series_vs_spread_at_32"] = round(ratio, 2)
    print(f"one series vs 32 studies at {REFERENCE_CLIENTS} clients: {ratio:.2f}x (target >= 0.8x)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
