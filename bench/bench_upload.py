"""Upload benchmark: several multi-GB WSI instances through ``dicomweb upload`` vs a raw SDK upload.

Starts Azurite, the Cosmos server and ``dicomweb serve``; makes tiled JPEG instances
(one of 4 GB with 100,000 frames, two smaller ones); and measures in the same run:

* ``dicomweb upload`` (upload sessions, blocks straight to Blob) aggregate MB/s, for the
  transfer and end to end, vs a raw parallel ``upload_blob`` of the same files into the
  same Azurite with the Azure SDK (measured before and after ours, averaged);
* the ingest pass (commit to result) of each instance, reported on its own;
* the time from the upload finishing to the first frame served (cold caches);
* the service's peak RSS on the session path, and on STOW-RS of the 4 GB instance.

Prints a table and one JSON line. Run: ``.venv/bin/python bench/bench_upload.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import MB, peak_rss_mb, stow  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import ROOT, fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, make_large_instance  # noqa: E402

MIB = 1024 * 1024


def raw_upload(settings: dict[str, str], paths: list[Path]) -> float:
    """Upload every file at once with the SDK's parallel ``upload_blob`` (8 MiB blocks, 16 per file); seconds."""
    service = BlobServiceClient.from_connection_string(
        settings["DICOMWEB_STORAGE_CONNECTION_STRING"], max_block_size=8 * MIB, max_single_put_size=8 * MIB)
    container = service.get_container_client("bench-raw")
    if not container.exists():
        container.create_container()

    def one(path: Path) -> None:
        with path.open("rb") as handle:
            container.upload_blob(path.name, handle, length=path.stat().st_size, overwrite=True, max_concurrency=16)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(paths)) as pool:
        list(pool.map(one, paths))
    elapsed = time.perf_counter() - started
    for path in paths:
        container.delete_blob(path.name)
    return elapsed


def first_frame_ms(base: str, slide: SlideFile) -> float:
    url = f"{base}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}/frames/1"
    started = time.perf_counter()
    response = httpx.get(url, headers={"accept": "image/jpeg"}, timeout=60)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames of the large instance")
    parser.add_argument("--frame-bytes", type=int, default=40_000)
    parser.add_argument("--small", type=int, default=2, help="how many smaller instances (a tenth of the frames)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-upload-bench-") as tmp:
        work = Path(tmp)
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        try:
            (work / "files").mkdir()
            started = time.perf_counter()
            large = make_large_instance(work / "files" / "large.dcm", frames=args.frames, frame_bytes=args.frame_bytes)
            smalls = [make_large_instance(work / "files" / f"small-{n}.dcm", frames=args.frames // 10,
                                          frame_bytes=args.frame_bytes) for n in range(args.small)]
            generate_s = time.perf_counter() - started
            paths = [large.path] + [s.path for s in smalls]
            total = sum(p.stat().st_size for p in paths)
            large_size = large.path.stat().st_size
            print(f"generated {len(paths)} instances, {total / MB:.0f} MB, in {generate_s:.1f} s", flush=True)
            os.sync()
            raw_before = raw_upload(settings, paths)
            print(f"raw upload {total / MB / raw_before:.1f} MB/s", flush=True)
            server = start_server(settings, work)
            try:
                os.sync()
                started = time.perf_counter()
                run = subprocess.run(
                    [sys.executable, "-m", "dicomweb", "upload", *map(str, paths), "--url", server.base_url, "--json",
                     "--no-progress", "--state", str(work / "state.json")],
                    capture_output=True, text=True, cwd=ROOT, check=False)
                wall_s = time.perf_counter() - started
                first_ms = first_frame_ms(server.base_url, large)
                if run.returncode != 0:
                    raise RuntimeError(run.stdout + run.stderr)
                results = {Path(r["path"]).name: r for r in map(json.loads, run.stdout.splitlines())}
                print(f"dicomweb upload done in {wall_s:.1f} s", flush=True)
                rss_sessions = peak_rss_mb(server.process.pid)
            finally:
                server.stop()
            os.sync()
            raw_s = (raw_before + raw_upload(settings, paths)) / 2
            # STOW-RS of the same 4 GB instance into storage of its own, for the service's memory on that path.
            stow_server = start_server(fresh_settings(settings), work, DICOMWEB_MAX_REQUEST_MB="16384")
            try:
                stow_s = stow(stow_server, large)
                rss_stow = peak_rss_mb(stow_server.process.pid)
            finally:
                stow_server.stop()
        finally:
            emulators.stop()
    transfer_s = max(r["seconds"] - r["ingest_seconds"] for r in results.values())
    raw_mbs, transfer_mbs, wall_mbs = total / MB / raw_s, total / MB / transfer_s, total / MB / wall_s
    large_result = results["large.dcm"]
    figures = {
        "instances": len(paths), "total_mb": round(total / MB), "large_mb": round(large_size / MB),
        "large_frames": args.frames, "generate_s": round(generate_s, 1),
        "raw_upload_mb_s": round(raw_mbs, 1), "upload_transfer_mb_s": round(transfer_mbs, 1),
        "upload_transfer_ratio": round(transfer_mbs / raw_mbs, 2), "upload_end_to_end_mb_s": round(wall_mbs, 1),
        "upload_end_to_end_ratio": round(wall_mbs / raw_mbs, 2),
        "ingest_s": {name: round(r["ingest_seconds"], 1) for name, r in results.items()},
        "large_ingest_mb_s": round(large_size / MB / large_result["ingest_seconds"], 1),
        "first_frame_after_upload_ms": round(first_ms, 1),
        "peak_rss_mb_sessions": round(rss_sessions, 1), "peak_rss_mb_stow_large": round(rss_stow, 1),
        "stow_large_mb_s": round(large_size / MB / stow_s, 1),
    }
    print(f"\n{len(paths)} instances, {total / MB:.0f} MB (the large one {figures['large_mb']} MB, "
          f"{args.frames} frames), generated in {generate_s:.1f} s")
    print(f"raw parallel upload_blob (SDK)      {raw_mbs:8.1f} MB/s")
    print(f"dicomweb upload, transfer           {transfer_mbs:8.1f} MB/s   ratio {transfer_mbs / raw_mbs:.2f} "
          "(target >= 0.9)")
    print(f"dicomweb upload, end to end         {wall_mbs:8.1f} MB/s   ratio {wall_mbs / raw_mbs:.2f} (with ingest)")
    for name, result in results.items():
        print(f"ingest pass {name:<22} {result['ingest_seconds']:8.1f} s")
    print(f"first frame after the upload ended  {first_ms:8.1f} ms  (target <= 2000)")
    print(f"service peak RSS: {rss_sessions:.0f} MB on the session path, {rss_stow:.0f} MB on STOW-RS of the "
          f"{figures['large_mb']} MB instance ({figures['stow_large_mb_s']} MB/s) (target <= 300)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
