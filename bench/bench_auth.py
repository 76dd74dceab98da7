"""What authentication costs: frame GETs and STOWs with bearer tokens, against the same service without.

Two ``dicomweb serve`` on the same emulators: the reference with ``DICOMWEB_AUTH_DISABLED=true``,
the other requiring tokens of a local OpenID Connect issuer (``tests/oidc.py``), checking the
route's role and writing the audit trail. Rounds alternate between them so both see the same
machine, in turn first and second; a round is ``--clients`` clients reading random frames for ``--seconds``, then four
clients storing small instances for as long (each time into a new series). The medians over ``--rounds`` rounds are compared.

Targets: frame GET p50 with tokens ≤ 1.15× without, frame p99 ≤ 1.3×, STOW throughput ≥ 0.9×.
Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_auth.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_load import percentile  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import Server, fresh_settings, start_server  # noqa: E402
from tests.oidc import AUDIENCE, Provider  # noqa: E402
from tests.wsi_factory import copy_instance, make_slide  # noqa: E402

FRAMES_ACCEPT = {"accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


async def phase(server: Server, headers: dict[str, str], frame_url: str, frames: int, spare: list[bytes],
                readers: int, writers: int, seconds: float) -> dict[str, float]:
    """``readers`` clients GETting random frames and ``writers`` clients storing copies of an instance."""
    latencies: list[float] = []
    stored = 0
    deadline = time.monotonic() + seconds

    async def reader(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await http.get(f"{frame_url}/{random.randint(1, frames)}", headers={**headers, **FRAMES_ACCEPT})
            assert response.status_code == 200, response.text[:200]
            latencies.append(time.perf_counter() - started)

    async def writer(http: httpx.AsyncClient) -> None:
        nonlocal stored
        while time.monotonic() < deadline and spare:
            response = await http.post(f"{server.base_url}/studies", content=spare.pop(),
                                       headers={**headers, "content-type": "application/dicom"})
            assert response.status_code == 200, response.text[:200]
            stored += 1

    limits = httpx.Limits(max_connections=readers + writers)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(writer(http) for _ in range(writers)), *(reader(http) for _ in range(readers)))
    if not readers:
        return {"stow_per_s": stored / seconds}
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "frames_per_s": len(latencies) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = Emulators(work / "emulators")
        settings = stack.start()
        provider = Provider()
        provider.server.start()
        storage = fresh_settings(settings)  # one store: both services read the same slide
        open_server = start_server(storage, work, DICOMWEB_AUTH_DISABLED="true")
        (work / "secured").mkdir()
        secured = start_server(storage, work / "secured", DICOMWEB_AUTH_ISSUER=provider.issuer,
                               DICOMWEB_AUTH_AUDIENCE=AUDIENCE)
        try:
            level, small = make_slide(work / "slide", levels=2, associated=False, base_size=(4096, 4096))[:2]
            assert httpx.post(f"{open_server.base_url}/studies", content=level.path.read_bytes(),
                              headers={"content-type": "application/dicom"}).status_code == 200
            # Each STOW phase stores into a series of its own, so no phase meets a larger series than another.
            batches = [[copy_instance(small, work / f"copy{b}-{i}.dcm", series_uid=series).path.read_bytes()
                        for i in range(int(args.seconds * 40))]
                       for b, series in enumerate(generate_uid() for _ in range(2 * args.rounds))]
            token = {"authorization": f"Bearer {provider.token(roles=['DICOM.Owner'])}"}
            path = f"/studies/{level.study_uid}/series/{level.series_uid}/instances/{level.sop_uid}/frames"
            runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
            order = [("without", open_server, {}), ("with", secured, token)]
            for round_ in range(args.rounds):
                for name, server, headers in order if round_ % 2 == 0 else order[::-1]:
                    url = server.base_url + path
                    reads = asyncio.run(phase(server, headers, url, level.number_of_frames, [], args.clients, 0,
                                              args.seconds))
                    writes = asyncio.run(phase(server, headers, url, level.number_of_frames, batches.pop(), 0, 4,
                                               args.seconds))
                    runs[name].append({**reads, **writes})
        finally:
            secured.stop()
            open_server.stop()
            provider.server.stop()
            stack.stop()
    summary = {name: {k: statistics.median(r[k] for r in results) for k in results[0]} for name, results in runs.items()}
    ratios = {"frame_p50": summary["with"]["p50"] / summary["without"]["p50"],
              "frame_p99": summary["with"]["p99"] / summary["without"]["p99"],
              "stow": summary["with"]["stow_per_s"] / summary["without"]["stow_per_s"]}
    print(f"{'':13} {'frame p50 ms':>13} {'frame p99 ms':>13} {'frames/s':>9} {'STOW/s':>7}")
    for name, values in summary.items():
        print(f"{name + ' auth':13} {values['p50'] * 1000:13.1f} {values['p99'] * 1000:13.1f} "
              f"{values['frames_per_s']:9.0f} {values['stow_per_s']:7.1f}")
    met = ratios["frame_p50"] <= 1.15 and ratios["frame_p99"] <= 1.3 and ratios["stow"] >= 0.9
    print(f"ratios: frame p50 {ratios['frame_p50']:.2f}× (≤ 1.15), p99 {ratios['frame_p99']:.2f}× (≤ 1.3), "
          f"STOW {ratios['stow']:.2f}× (≥ 0.9): {'met' if met else 'NOT met'}")
    print(json.dumps({"bench": "auth", "summary": summary, "ratios": ratios, "met": met}))
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
