"""Scanner file to stored slide: ``dicomweb upload slide.svs`` (convert, then upload) against uploading the same
slide's ready-made DICOM, in one run.

Writes an Aperio-style SVS of about ``--gb`` GB (tiled JPEG levels, thumbnail, label, macro; the tiles are a
pool of pre-encoded textured tiles, so writing it costs no encoding), then against one ``dicomweb serve``:

1. the reference: ``dicomweb convert`` beforehand (timed apart, with its peak RSS), then ``dicomweb upload`` of
   the folder of instances it made;
2. ``dicomweb upload slide.svs`` with other metadata (so other UIDs: nothing is "already stored"), which
   converts and uploads.

Targets: (2) at least 0.7x the speed of (1), the converter's peak RSS at most 500 MB. Prints a table and one
JSON line. Run: ``.venv/bin/python bench/bench_convert.py`` (``--gb N``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import psutil
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.scanner_files import APERIO, JPEG, MPP, TILE, tissue  # noqa: E402

POOL = 64


def tile_pool(seed: int = 7) -> tuple[list[bytes], int]:
    """``POOL`` JPEG tiles of tissue-like texture (abbreviated: tifffile writes one shared table set) and their
    mean size."""
    image = tissue((TILE * 8, TILE * 8), seed)
    tiles = [imagecodecs.jpeg8_encode(image[y:y + TILE, x:x + TILE], level=90)
             for y in range(0, TILE * 8, TILE) for x in range(0, TILE * 8, TILE)][:POOL]
    return tiles, sum(map(len, tiles)) // len(tiles)


def make_big_svs(path: Path, gigabytes: float) -> tuple[int, int]:
    """An SVS of about ``gigabytes`` GB with four levels; its base size."""
    tiles, mean = tile_pool()
    count = int(gigabytes * 1e9 / mean / (1 + 1 / 4 + 1 / 16 + 1 / 64))
    across = int(count**0.5 * 1.3)
    down = max(1, count // across)
    width, height = across * TILE, down * TILE
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(4):
            w, h = max(TILE, width >> level), max(TILE, height >> level)
            n = -(-w // TILE) * -(-h // TILE)
            description = (f"{APERIO}{width}x{height} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q=90"
                           f"|AppMag = 20|MPP = {MPP * 2**level}")
            # Pre-encoded tiles go in as they are (tifffile writes bytes segments without compressing them).
            tif.write((tiles[i % POOL] for i in range(n)), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                      **JPEG, metadata=None, description=description)
            if level == 0:
                thumbnail = tissue((512, max(1, 512 * height // width)), 1)
                tif.write(thumbnail, compression="jpeg", photometric="rgb", metadata=None,
                          description=f"{APERIO}{width}x{height} -> thumbnail")
        tif.write(tissue((400, 200), 2), compression="lzw", photometric="rgb", metadata=None, subfiletype=1,
                  description=f"{APERIO}label 400x200")
        tif.write(tissue((800, 300), 3), compression="jpeg", photometric="rgb", metadata=None, subfiletype=9,
                  description=f"{APERIO}macro 800x300")
    return width, height


def timed(command: list[str]) -> tuple[float, int]:
    """Seconds a command took, and its peak RSS in MB (sampled every 50 ms)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"{command[3]} failed: {output[-3000:]}")
    return seconds, peak // 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-convert-") as tmp:
        work = Path(tmp)
        slide = work / "slide.svs"
        started = time.perf_counter()
        width, height = make_big_svs(slide, args.gb)
        size = slide.stat().st_size
        print(f"{slide.name}: {size / 1e9:.2f} GB, {width}x{height}, written in {time.perf_counter() - started:.0f} s",
              flush=True)
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        server = start_server(settings, work)
        dicomweb = [sys.executable, "-m", "dicomweb"]
        try:
            convert_s, convert_mb = timed([*dicomweb, "convert", str(slide), "--out", str(work / "dicom"),
                                           "--patient-id", "REFERENCE"])
            ready = work / "dicom" / slide.name
            dicom_bytes = sum(p.stat().st_size for p in ready.glob("*.dcm"))
            upload_s, _ = timed([*dicomweb, "upload", str(ready), "--url", server.base_url, "--no-progress"])
            both_s, both_mb = timed([*dicomweb, "upload", str(slide), "--url", server.base_url, "--no-progress",
                                     "--patient-id", "CONVERTED"])
        finally:
            server.stop()
            emulators.stop()
    figures = {"svs_gb": round(size / 1e9, 2), "dicom_gb": round(dicom_bytes / 1e9, 2),
               "convert_s": round(convert_s, 1), "convert_peak_rss_mb": convert_mb,
               "upload_ready_dicom_s": round(upload_s, 1), "convert_and_upload_s": round(both_s, 1),
               "upload_with_conversion_peak_rss_mb": both_mb, "speed_ratio": round(upload_s / both_s, 2)}
    print(f"convert alone: {convert_s:.1f} s, peak RSS {convert_mb} MB (target <= 500)")
    print(f"upload of the ready-made DICOM ({dicom_bytes / 1e9:.2f} GB): {upload_s:.1f} s; "
          f"upload of the SVS, converting: {both_s:.1f} s: {upload_s / both_s:.2f}x (target >= 0.7x)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
