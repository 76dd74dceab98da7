"""Metadata of a slide with a 1,000,000-point bulk annotation: its coordinates travel as bulk data, not in the JSON.

Stores the same slide (four levels, label, overview, thumbnail) twice, in two studies, and into the
second one a Microscopy Bulk Simple Annotations series made by highdicom (1,000,000 nuclei and 1,000
tumour polygons: 8 MB of point coordinates). Then reads, alternating, round by round: the metadata of
the study without annotations (the reference) and of the one with them, what a viewer reads to open a
slide with its annotations; the annotation series' metadata alone; and the nuclei's coordinates by
their BulkDataURI; in an order shuffled each round. What the coordinates and indices would add to the
JSON inline (base64) is reported beside.
Targets: the study's metadata with the annotations ≤ 1.5× the bytes and ≤ 1.5× the time of the one without.
Run: ``.venv/bin/python bench/bench_annotations.py`` (``--points N --rounds N``).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_summaries import store  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, copy_instance, make_annotations, make_slide  # noqa: E402

JSON = {"accept": "application/dicom+json", "accept-encoding": "identity"}
OCTETS = {"accept": "application/octet-stream"}


def timed(http: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, int]:
    """Milliseconds and body bytes of one GET, checked to answer 200."""
    started = time.perf_counter()
    response = http.get(url, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return elapsed, len(response.content)


def copy_slide(files: list[SlideFile], work: Path) -> list[SlideFile]:
    """The slide again in a study and series of its own."""
    study, series = generate_uid(), generate_uid()
    work.mkdir()
    return [copy_instance(file, work / f"{n}.dcm", study_uid=study, series_uid=series) for n, file in enumerate(files)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--polygons", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        work = Path(tmp)
        plain = make_slide(work / "plain", levels=4, base_size=(8192, 6144))
        annotated = copy_slide(plain, work / "annotated")
        annotations = make_annotations(annotated[0], work / "ann.dcm", points=args.points, polygons=args.polygons)
        groups = pydicom.dcmread(annotations.path).AnnotationGroupSequence
        nuclei = groups[0].PointCoordinatesData
        inline = sum(len(base64.b64encode(value)) for value in (
            nuclei, groups[1].PointCoordinatesData, groups[1].LongPrimitivePointIndexList))
        emulators = Emulators(work / "emulators")
        emulators.start()
        try:
            env = fresh_settings(emulators.settings())
            server = start_server(env, work)
            try:
                store(server.base_url, [*plain, *annotated, annotations])
                base = server.base_url
                urls = {
                    "study without": (f"{base}/studies/{plain[0].study_uid}/metadata", JSON),
                    "study with": (f"{base}/studies/{annotated[0].study_uid}/metadata", JSON),
                    "slide series": (f"{base}/studies/{annotated[0].study_uid}/series/{annotated[0].series_uid}"
                                     "/metadata", JSON),
                    "annotation series": (f"{base}/studies/{annotations.study_uid}/series/{annotations.series_uid}"
                                          "/metadata", JSON),
                    "nuclei bulk data": (f"{base}/studies/{annotations.study_uid}/series/{annotations.series_uid}"
                                         f"/instances/{annotations.sop_uid}/bulkdata/006A0002.0.00660016", OCTETS),
                }
                times: dict[str, list[float]] = {name: [] for name in urls}
                sizes: dict[str, int] = {}
                order = random.Random(1)
                with httpx.Client(timeout=120) as http:
                    for name, (url, headers) in urls.items():  # warm up: caches, connections
                        timed(http, url, headers)
                    for _ in range(args.rounds):
                        for name in order.sample(list(urls), len(urls)):
                            url, headers = urls[name]
                            elapsed, size = timed(http, url, headers)
                            times[name].append(elapsed)
                            sizes[name] = size
            finally:
                server.stop()
        finally:
            emulators.stop()
    assert sizes["nuclei bulk data"] == len(nuclei), "the whole coordinates, byte for byte"
    medians = {name: statistics.median(values) for name, values in times.items()}
    byte_ratio = sizes["study with"] / sizes["study without"]
    time_ratio = medians["study with"] / medians["study without"]
    figures = {"points": args.points, "polygons": args.polygons, "rounds": args.rounds,
               **{f"{name} bytes": sizes[name] for name in urls},
               **{f"{name} ms p50": round(medians[name], 1) for name in urls},
               "bytes ratio": round(byte_ratio, 2), "time ratio": round(time_ratio, 2), "inline base64 bytes": inline}
    print(f"\n{args.points:,} points and {args.polygons:,} polygons ({len(nuclei):,} bytes of nuclei coordinates), "
          f"medians of {args.rounds} rounds")
    for name in urls:
        print(f"  {name:22} {sizes[name]:>12,} B  {medians[name]:8.1f} ms")
    print(f"study metadata with the annotations vs without: {byte_ratio:.2f}x the bytes (target <= 1.5x), "
          f"{time_ratio:.2f}x the time (target <= 1.5x)")
    print(f"inline, the coordinates and indices would add {inline:,} bytes of base64 to that JSON "
          f"({(sizes['study with'] + inline) / sizes['study without']:.0f}x the bytes)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
