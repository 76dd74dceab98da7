"""Upload benchmark: a multi-GB WSI instance through ``dicomweb upload`` vs a raw parallel SDK upload.

Starts Azurite (blob and queue), the Cosmos server and ``dicomweb serve``; makes tiled
JPEG instances (4 GB with 100,000 frames, 400 MB with 10,000, and 1 GB for STOW-RS);
and measures in the same run:

* end to end for the 4 GB instance: from starting ``dicomweb upload`` until the instance
  is found by QIDO-RS and its frame 1 is served, vs a raw parallel ``upload_blob`` of the
  same file into the same Azurite with the Azure SDK (measured before and after, averaged);
* commit → stored with the client's frame offset record, for 4 GB and for 400 MB (the
  zero-copy commit: its cost must not grow with the size);
* the scan path: the same 4 GB committed without a record (uploaded through the SAS with
  the SDK), commit → stored, vs a raw parallel ranged read of the stored blob;
* the service's peak RSS over all of that, and STOW-RS of the 1 GB instance vs a raw upload (before and
  after, averaged).

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
from azure.storage.blob import BlobClient, BlobServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import MB, peak_rss_mb, stow  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import ROOT, Server, fresh_settings, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, make_large_instance  # noqa: E402

MIB = 1024 * 1024
RAW_CONCURRENCY = 16


def _service(settings: dict[str, str]) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(
        settings["DICOMWEB_STORAGE_CONNECTION_STRING"], max_block_size=8 * MIB, max_single_put_size=8 * MIB)


def raw_upload(settings: dict[str, str], path: Path, concurrency: int = RAW_CONCURRENCY) -> float:
    """Upload ``path`` with the SDK's parallel ``upload_blob`` (8 MiB blocks); seconds."""
    container = _service(settings).get_container_client("bench-raw")
    if not container.exists():
        container.create_container()
    started = time.perf_counter()
    with path.open("rb") as handle:
        container.upload_blob(path.name, handle, length=path.stat().st_size, overwrite=True,
                              max_concurrency=concurrency)
    elapsed = time.perf_counter() - started
    container.delete_blob(path.name)
    return elapsed


def raw_read(settings: dict[str, str], container: str, name: str) -> float:
    """Read a blob with the SDK's parallel ranged download (8 MiB ranges, 8 at once), discarding it; seconds."""
    blob = _service(settings).get_blob_client(container, name)
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        blob.download_blob(max_concurrency=8).readinto(sink)
    return time.perf_counter() - started


def upload(server: Server, path: Path, state: Path) -> dict:
    """``dicomweb upload`` of one file; its JSON result (seconds, ingest_seconds: commit → stored)."""
    run = subprocess.run(
        [sys.executable, "-m", "dicomweb", "upload", str(path), "--url", server.base_url, "--json", "--no-progress",
         "--state", str(state)], capture_output=True, text=True, cwd=ROOT, check=False)
    if run.returncode != 0:
        raise RuntimeError(run.stdout + run.stderr)
    (result,) = map(json.loads, run.stdout.splitlines())
    return result


def served(server: Server, slide: SlideFile) -> None:
    """Wait until QIDO-RS finds the instance and its frame 1 is served."""
    while not httpx.get(f"{server.base_url}/studies/{slide.study_uid}/instances").json():
        time.sleep(0.05)
    url = f"{server.base_url}/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{slide.sop_uid}/frames/1"
    httpx.get(url, headers={"accept": "image/jpeg"}, timeout=60).raise_for_status()


def scan_commit(server: Server, slide: SlideFile) -> float:
    """Upload through a session's SAS with the SDK (no record), then commit: seconds from commit to stored."""
    data_size = slide.path.stat().st_size
    session = httpx.post(f"{server.base_url}/uploads", json={"size": data_size}).json()
    with slide.path.open("rb") as handle:
        BlobClient.from_blob_url(session["uploadUrl"], max_block_size=8 * MIB, max_single_put_size=8 * MIB
                                 ).upload_blob(handle, length=data_size, max_concurrency=RAW_CONCURRENCY)
    started = time.perf_counter()
    answer = httpx.post(session["commitUrl"], timeout=600)
    while answer.status_code == 202:
        time.sleep(0.1)
        answer = httpx.get(session["statusUrl"])
        if answer.json()["status"] != "ingesting":
            break
    elapsed = time.perf_counter() - started
    status = httpx.get(session["statusUrl"]).json()
    if status["status"] != "stored":
        raise RuntimeError(f"the scan path did not store the instance: {status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames of the large instance")
    parser.add_argument("--frame-bytes", type=int, default=40_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomweb-upload-bench-") as tmp:
        work = Path(tmp)
        emulators = Emulators(work / "emulators")
        settings = emulators.start()
        try:
            (work / "files").mkdir()
            started = time.perf_counter()
            with ThreadPoolExecutor(3) as pool:
                large, small, stowed = pool.map(lambda item: make_large_instance(
                    work / "files" / item[0], frames=item[1], frame_bytes=args.frame_bytes),
                    [("large.dcm", args.frames), ("small.dcm", args.frames // 10), ("stow.dcm", args.frames // 4)])
            generate_s = time.perf_counter() - started
            large_size, small_size = large.path.stat().st_size, small.path.stat().st_size
            stow_size = stowed.path.stat().st_size
            print(f"generated 4 GB-class, 400 MB-class and 1 GB-class instances in {generate_s:.1f} s", flush=True)
            os.sync()
            raw_before = raw_upload(settings, large.path)
            print(f"raw upload {large_size / MB / raw_before:.1f} MB/s", flush=True)
            server = start_server(fresh_settings(settings), work)
            try:
                os.sync()
                started = time.perf_counter()
                large_result = upload(server, large.path, work / "state.json")
                served(server, large)
                end_to_end_s = time.perf_counter() - started
                print(f"dicomweb upload of {large_size / MB:.0f} MB, end to end {end_to_end_s:.1f} s", flush=True)
                time.sleep(2)  # the queue listener idle again, as it was when the large upload committed
                small_result = upload(server, small.path, work / "state.json")
                env = server.env
                container = env["DICOMWEB_INSTANCE_CONTAINER"]
                (name,) = [b.name for b in _service(env).get_container_client(container).list_blobs(
                    name_starts_with=large.study_uid)]
                raw_read_s = raw_read(env, container, name)
                httpx.delete(f"{server.base_url}/studies/{large.study_uid}", timeout=120).raise_for_status()
                scan_s = scan_commit(server, large)
                print(f"scan path: commit → stored {scan_s:.1f} s", flush=True)
                rss_sessions = peak_rss_mb(server.process.pid)
            finally:
                server.stop()
            os.sync()
            raw_s = (raw_before + raw_upload(settings, large.path)) / 2
            stow_server = start_server(fresh_settings(settings), work, DICOMWEB_MAX_REQUEST_MB="16384")
            try:
                stow_raw_before = raw_upload(settings, stowed.path, concurrency=4)
                stow_s = stow(stow_server, stowed)
                rss_stow = peak_rss_mb(stow_server.process.pid)
                stow_raw_s = (stow_raw_before + raw_upload(settings, stowed.path, concurrency=4)) / 2
            finally:
                stow_server.stop()
        finally:
            emulators.stop()
    commit_large, commit_small = large_result["ingest_seconds"], small_result["ingest_seconds"]
    figures = {
        "large_mb": round(large_size / MB), "large_frames": args.frames, "small_mb": round(small_size / MB),
        "generate_s": round(generate_s, 1), "raw_upload_mb_s": round(large_size / MB / raw_s, 1),
        "end_to_end_s": round(end_to_end_s, 1), "end_to_end_mb_s": round(large_size / MB / end_to_end_s, 1),
        "end_to_end_ratio": round(raw_s / end_to_end_s, 2),
        "commit_to_stored_large_s": round(commit_large, 2), "commit_to_stored_small_s": round(commit_small, 2),
        "commit_size_ratio": round(commit_large / commit_small, 2),
        "scan_commit_to_stored_s": round(scan_s, 1), "raw_ranged_read_s": round(raw_read_s, 1),
        "scan_ratio": round(raw_read_s / scan_s, 2),
        "peak_rss_mb_sessions": round(rss_sessions, 1), "peak_rss_mb_stow": round(rss_stow, 1),
        "stow_mb": round(stow_size / MB), "stow_mb_s": round(stow_size / MB / stow_s, 1),
        "stow_ratio": round(stow_raw_s / stow_s, 2),
    }
    print(f"\n{figures['large_mb']} MB instance with {args.frames} frames (and {figures['small_mb']} MB), "
          f"generated in {generate_s:.1f} s")
    print(f"raw parallel upload_blob (SDK, {RAW_CONCURRENCY} at once) {figures['raw_upload_mb_s']:8.1f} MB/s")
    print(f"dicomweb upload, start → in QIDO and frame 1 served  {figures['end_to_end_mb_s']:8.1f} MB/s   "
          f"ratio {figures['end_to_end_ratio']:.2f} (target >= 0.9)")
    print(f"commit → stored with the client's record: {commit_large:.2f} s ({figures['large_mb']} MB), "
          f"{commit_small:.2f} s ({figures['small_mb']} MB): ratio {figures['commit_size_ratio']:.2f} "
          "(targets <= 2 s, <= 2)")
    print(f"scan path (no record) commit → stored {scan_s:.1f} s vs raw parallel ranged read {raw_read_s:.1f} s: "
          f"ratio {figures['scan_ratio']:.2f} (target >= 0.8)")
    print(f"service peak RSS {rss_sessions:.0f} MB over uploads and scan (target <= 300); STOW-RS of "
          f"{figures['stow_mb']} MB: {figures['stow_mb_s']} MB/s, ratio {figures['stow_ratio']:.2f} to a raw upload "
          f"(target >= 0.9), peak RSS {rss_stow:.0f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
