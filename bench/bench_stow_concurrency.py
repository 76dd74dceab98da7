"""STOW-RS under concurrency: 256 small instances into one series at 1, 8, 32 and 64 clients, against the
service as it was before the generation owner (issue 21) and as it is now, in the same run.

Starts Azurite and the Cosmos server once; each run gets a fresh index and fresh containers
(the local Cosmos server scans every document per query, so runs must not inherit each
other's documents) and its own ``dicomweb serve``, of this tree or of ``--baseline`` (a git
revision, checked out into a temporary folder; by default the commit before
``dicomweb/generations.py`` was added). The Cosmos server counts the document requests each
run makes, so the table gives Cosmos calls per store. A second reference, the same stores
spread over 32 studies at 32 clients, shows that a shared series does not serialise stores.

Targets: at 1 client ≥ 1.5× the baseline's instances/s, at 32 clients ≥ 1.2×; no failure at
any level; the counts exact after every run (checked against what was stored).
Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_stow_concurrency.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, copy_instance, make_slide  # noqa: E402

LEVELS = (1, 8, 32, 64)
REFERENCE_CLIENTS = 32
TARGETS = {1: 1.5, 32: 1.2}


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


def default_baseline() -> str:
    """The commit before the one that added ``dicomweb/generations.py``."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "dicomweb/generations.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return f"{added[-1]}^"


def check_out(revision: str, into: Path) -> Path:
    """The tree of ``revision`` in ``into``, where ``python -m dicomweb`` imports that tree's package."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    where = subprocess.run([sys.executable, "-c", "import dicomweb; print(dicomweb.__file__)"], cwd=into,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(into)), f"the baseline imports {where}"
    return into


def run(emulators: Emulators, work: Path, app: Path, files: list[SlideFile], clients: int) -> dict[str, float]:
    """One run: instances/s, failures, what the summaries count, and Cosmos requests per store."""
    server = start_server(fresh_settings(emulators.settings()), work, app_root=app)
    try:
        bodies = [f.path.read_bytes() for f in files]
        before = emulators.cosmos_requests()
        seconds, failures = asyncio.run(store_all(server.base_url, bodies, clients))
        calls = emulators.cosmos_requests() - before
        counted = counts(server.base_url, {f.study_uid for f in files})
    finally:
        server.stop()
    return {"per_s": len(files) / seconds, "failures": failures, "counted": counted, "calls": calls / len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=256)
    parser.add_argument("--baseline", default=None, help="git revision to compare with (default: before issue 21)")
    args = parser.parse_args()
    baseline = args.baseline or default_baseline()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        apps = {"before": check_out(baseline, work / "baseline"), "now": ROOT}
        source = make_slide(work / "source", levels=1, base_size=(256, 256), associated=False)[0]
        spread_studies = [generate_uid() for _ in range(REFERENCE_CLIENTS)]
        spread = [copy_instance(source, work / f"b{n}.dcm", study_uid=spread_studies[n % REFERENCE_CLIENTS],
                                series_uid=generate_uid(entropy_srcs=[spread_studies[n % REFERENCE_CLIENTS]]))
                  for n in range(args.instances)]
        emulators = Emulators(work / "emulators")
        emulators.start()
        figures: dict[str, object] = {"instances": args.instances, "instance_bytes": source.path.stat().st_size,
                                      "baseline": subprocess.run(["git", "rev-parse", "--short", baseline], cwd=ROOT,
                                                                 capture_output=True, text=True).stdout.strip()}
        results: dict[tuple[str, int], dict[str, float]] = {}
        try:
            print(f"\n{args.instances} instances of {source.path.stat().st_size / 1024:.0f} KB each, one series; "
                  f"baseline {figures['baseline']}")
            print(f"{'clients':>7}{'':2}{'version':<8}{'inst/s':>8}{'calls/store':>12}{'failures':>10}{'counted':>9}")
            for clients in LEVELS:
                for version, app in apps.items():  # interleaved, so that drift hits both alike
                    files = [copy_instance(source, work / f"{version}{clients}-{n}.dcm")
                             for n in range(args.instances)]
                    result = results[(version, clients)] = run(emulators, work, app, files, clients)
                    for name, value in result.items():
                        figures[f"{version}_{clients}_{name}"] = round(value, 2)
                    print(f"{clients:>7}{'':2}{version:<8}{result['per_s']:>8.1f}{result['calls']:>12.1f}"
                          f"{int(result['failures']):>10}{int(result['counted']):>9}")
            reference = run(emulators, work, ROOT, spread, REFERENCE_CLIENTS)
        finally:
            emulators.stop()
    for clients in LEVELS:
        ratio = results[("now", clients)]["per_s"] / results[("before", clients)]["per_s"]
        figures[f"ratio_{clients}"] = round(ratio, 2)
        target = f" (target >= {TARGETS[clients]}x)" if clients in TARGETS else ""
        print(f"{clients:>2} clients: now / before {ratio:.2f}x{target}")
    spread_ratio = results[("now", REFERENCE_CLIENTS)]["per_s"] / reference["per_s"]
    figures["ratio_series_vs_spread_at_32"] = round(spread_ratio, 2)
    print(f"one series vs 32 studies at {REFERENCE_CLIENTS} clients: {spread_ratio:.2f}x")
    exact = all(r["counted"] == args.instances and r["failures"] == 0 for r in results.values())
    figures["exact_and_no_failures"] = exact
    print(f"no failure and exact counts in every run: {exact}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
