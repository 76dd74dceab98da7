"""Scanner file to stored slide: ``dicomweb upload slide.svs`` (convert, then upload) against uploading the same
slide's ready-made DICOM, in one run.

Writes an Aperio-style SVS of about ``--gb`` GB (tiled JPEG levels, thumbnail, label, macro; the tiles are a
pool of pre-encoded textured tiles, so writing it costs no encoding), then against one ``dicomweb serve``:

1. the reference: ``dicomweb convert`` beforehand (timed apart, with its peak RSS), then ``dicomweb upload`` of
   the folder of instances it made;
2. ``dicomweb upload slide.svs`` with other metadata (so other UIDs: nothing is "already stored"), which
   converts and uploads;
3. the inbox: the same SVS written to the inbox container (other metadata again, in the blob's metadata), and
   the time from its arrival to the whole slide in QIDO, with the service's peak RSS meanwhile.

Targets: (2) at least 0.7x the speed of (1), the converter's peak RSS at most 500 MB. Prints a table and one
JSON line. Run: ``.venv/bin/python bench/bench_convert.py`` (``--gb N``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import imagecodecs
import numpy as np
import psutil
import tifffile
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomweb.config import Settings  # noqa: E402
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


def through_the_inbox(server, settings: dict[str, str], slide: Path) -> tuple[float, int, int]:
    """Write ``slide`` to the inbox container; seconds from its arrival until QIDO lists every instance of its study,
    the serving process's peak RSS (MB) meanwhile, and the instances found."""
    container = BlobServiceClient.from_connection_string(settings["DICOMWEB_STORAGE_CONNECTION_STRING"]) \
        .get_container_client(Settings.from_env(settings).inbox_container)
    with slide.open("rb") as data:
        container.upload_blob(slide.name, data, overwrite=True, metadata={"PatientID": "INBOX"}, max_concurrency=8)
    arrived, peak, served = time.perf_counter(), 0, psutil.Process(server.process.pid)
    while True:
        peak = max(peak, sum(p.memory_info().rss for p in [served, *served.children(recursive=True)]
                             if "node" not in p.name()))
        record = httpx.get(f"{server.base_url}/inbox", params={"file": slide.name}).json()
        if record.get("status") == "failed":
            raise RuntimeError(f"the inbox failed: {record}")
        if record.get("status") == "stored":
            found = httpx.get(f"{server.base_url}/studies/{record['study']}/instances").json()
            if len(found) == record["instances"]:
                return time.perf_counter() - arrived, peak // 2**20, len(found)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=4, help="the two uploads alternate; the median is kept")
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
        converts, uploads, boths = [], [], []
        try:
            for round_ in range(args.rounds):  # other metadata each round: other UIDs, nothing "already stored"
                out = work / f"dicom-{round_}"
                converts.append(timed([*dicomweb, "convert", str(slide), "--out", str(out),
                                       "--patient-id", f"REFERENCE-{round_}"]))
                ready = out / slide.name
                dicom_bytes = sum(p.stat().st_size for p in ready.glob("*.dcm"))
                # Each upload makes the store bigger (and the emulator slower): the order alternates between rounds.
                ready_made = [*dicomweb, "upload", str(ready), "--url", server.base_url, "--no-progress"]
                converting = [*dicomweb, "upload", str(slide), "--url", server.base_url, "--no-progress",
                              "--patient-id", f"CONVERTED-{round_}"]
                for command, runs in [(ready_made, uploads), (converting, boths)][:: 1 if round_ % 2 == 0 else -1]:
                    runs.append(timed(command))
                shutil.rmtree(out)
                print(f"round {round_ + 1}: ready-made {uploads[-1][0]:.1f} s, converting {boths[-1][0]:.1f} s",
                      flush=True)
            inbox_s, inbox_mb, instances = through_the_inbox(server, settings, slide)
            print(*(line for line in server.log.read_text().splitlines() if "dicomweb.inbox:" in line), sep="\n")
        finally:
            server.stop()
            emulators.stop()
    convert_s, upload_s, both_s = (statistics.median(t for t, _ in runs) for runs in (converts, uploads, boths))
    convert_mb, both_mb = max(mb for _, mb in converts), max(mb for _, mb in boths)
    figures = {"svs_gb": round(size / 1e9, 2), "dicom_gb": round(dicom_bytes / 1e9, 2), "rounds": args.rounds,
               "convert_s": round(convert_s, 1), "convert_peak_rss_mb": convert_mb,
               "upload_ready_dicom_s": round(upload_s, 1), "convert_and_upload_s": round(both_s, 1),
               "upload_with_conversion_peak_rss_mb": both_mb, "speed_ratio": round(upload_s / both_s, 2),
               "inbox_arrival_to_qido_s": round(inbox_s, 1), "inbox_instances": instances,
               "service_peak_rss_mb_during_inbox": inbox_mb}
    print(f"convert alone: {convert_s:.1f} s, peak RSS {convert_mb} MB (target <= 500)")
    print(f"upload of the ready-made DICOM ({dicom_bytes / 1e9:.2f} GB): {upload_s:.1f} s; "
          f"upload of the SVS, converting: {both_s:.1f} s: {upload_s / both_s:.2f}x (target >= 0.7x; medians of "
          f"{args.rounds})")
    print(f"inbox: {instances} instances in QIDO {inbox_s:.1f} s after the SVS arrived "
          f"(the service's peak RSS meanwhile: {inbox_mb} MB)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
