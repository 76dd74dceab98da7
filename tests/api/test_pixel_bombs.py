"""Pixel bombs stored before ingest checked codestream headers: their frames are never decoded.

Each codec's bomb (a 256×256 instance whose frame header claims 30000×30000 pixels; decoded, that is
2.6 GB for JPEG and 7 GB for JPEG 2000 and HTJ2K) is seeded as an older service stored it: the store use
case in-process, with the codestream check off. A ``serve`` of its own then answers every decoding
resource (a transcoded frame or instance, rendered frames and instances, thumbnails) with a 4xx in under
0.5 s, its resident set rising by less than 50 MB; the stored bytes are still served as they are.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import psutil
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, HTJ2KLossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from dicomweb import stow
from dicomweb.config import Settings
from dicomweb.service import Service
from tests.conftest import Server, fresh_settings, start_server
from tests.wsi_factory import SlideFile, make_bomb, rle_bomb

MB = 1024 * 1024
#: Each codec's bomb, and an RLE frame whose header is sound but whose runs decode to 3 × 64 MiB.
BOMBS = {"jpeg": JPEGBaseline8Bit, "jpeg2000": JPEG2000, "htj2k": HTJ2KLossless, "jpeg-ls": JPEGLSLossless,
         "rle": RLELossless, "rle-runs": RLELossless}
NATIVE = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
#: Every resource that decodes the frame, and what it asks for.
RESOURCES = {
    "frame as native": ("/frames/1", NATIVE),
    "frame as JPEG 2000": ("/frames/1", 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'),
    "rendered frame": ("/frames/1/rendered", "image/jpeg"),
    "frame thumbnail": ("/frames/1/thumbnail", "image/png"),
    "rendered instance": ("/rendered", "image/jpeg"),
    "instance thumbnail": ("/thumbnail", "image/jpeg"),
    "study thumbnail": ("study/thumbnail", "image/jpeg"),
    "instance as native": ("", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
}


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    data = path.read_bytes()
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


async def _unchecked(*_: object) -> None:
    """What ingest checked of codestream headers before it checked them: nothing."""


async def _seed(settings: dict[str, str], files: list[SlideFile]) -> None:
    """Store ``files`` as an older service did: the STOW use case, without the codestream check."""
    service = await Service.create(Settings.from_env(settings))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(stow, "check_codestreams", _unchecked)
            for file in files:
                outcome = await stow.store_instance(service, _chunks(file.path), None)
                assert outcome.error is None, outcome.error
    finally:
        await service.close()


@pytest.fixture(scope="module")
def seeded(emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Server, dict[str, SlideFile]]]:
    settings = fresh_settings(emulators)
    bombs = {name: make_bomb(tmp_path_factory.mktemp(name), syntax,
                             rle_bomb(3, MB) if name == "rle-runs" else None) for name, syntax in BOMBS.items()}
    asyncio.run(_seed(settings, list(bombs.values())))
    server = start_server(settings, tmp_path_factory.mktemp("bombs"))
    # A safety net, should a decoder ever see one of these frames again: allocations of gigabytes fail in the
    # service instead of taking the machine's memory (the measured growth below is what the tests judge).
    process = psutil.Process(server.process.pid)
    ceiling = process.memory_info().vms + 1024 * MB
    process.rlimit(psutil.RLIMIT_AS, (ceiling, ceiling))
    yield server, bombs
    server.stop()


def _status(pid: int, field: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(field))


def _measured(server: Server, url: str, accept: str) -> tuple[httpx.Response, float, float]:
    """The answer, its seconds, and how far the service's resident set rose above where it was (in MB) while
    it answered: its peak (VmHWM) is reset to the current size first."""
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status(pid, "VmRSS:")
    started = time.perf_counter()
    response = httpx.get(url, headers={"accept": accept}, timeout=60)
    seconds = time.perf_counter() - started
    return response, seconds, (_status(pid, "VmHWM:") - before) / MB


@pytest.mark.parametrize("resource", RESOURCES)
@pytest.mark.parametrize("bomb", BOMBS)
def test_a_stored_bomb_is_never_decoded(seeded: tuple[Server, dict[str, SlideFile]], bomb: str,
                                        resource: str) -> None:
    server, bombs = seeded
    file = bombs[bomb]
    path, accept = RESOURCES[resource]
    study = f"{server.base_url}/studies/{file.study_uid}"
    url = f"{study}/{path[6:]}" if path.startswith("study/") else \
        f"{study}/series/{file.series_uid}/instances/{file.sop_uid}{path}"
    response, seconds, growth = _measured(server, url, accept)
    # A refused header is a conflict in the stored data (409); RLE runs beyond the image are the decoder's
    # refusal, as any frame it cannot decode (406).
    assert response.status_code == (406 if bomb == "rle-runs" else 409), response.text
    assert response.headers["content-type"] == "application/dicom+json"
    message = response.json()["message"]
    assert ("does not decode" if bomb == "rle-runs" else "30000×30000 pixels" if bomb != "rle" else
            "15 segments") in message, message
    assert seconds < 1.0, f"{seconds:.2f} s"  # a decoded bomb takes many seconds; a loaded CI machine, 0.5 at times
    assert growth < 50, f"the service's resident set rose by {growth:.0f} MB"


def test_the_stored_bytes_of_a_bomb_are_still_served_as_they_are(
        seeded: tuple[Server, dict[str, SlideFile]]) -> None:
    server, bombs = seeded
    file = bombs["jpeg"]
    url = f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}/frames/1"
    response = httpx.get(url, headers={"accept": "image/jpeg; transfer-syntax=*"}, timeout=60)
    assert response.status_code == 200
    assert response.content == next(generate_frames(pydicom.dcmread(file.path).PixelData, number_of_frames=1))
