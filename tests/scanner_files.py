"""Scanner files for the converter's tests, written with tifffile: tiled pyramidal JPEG TIFFs as an Aperio
scanner (SVS, with a thumbnail, a label and a macro image), as OME-TIFF, and as a plain pyramidal TIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

TILE = 256
#: µm per pixel of the base level.
MPP = 0.5
APERIO = "Aperio Image Library v12.0.15 \r\n"
#: How the tiled levels are written: JPEG tiles (with shared tables) at quality 90.
JPEG = {"compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}


def tissue(size: tuple[int, int], seed: int) -> np.ndarray:
    """An RGB image of ``size`` (width, height) with texture and gradients (compresses like tissue)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width)[None, :, None] + np.linspace(0, 40, height)[:, None, None]
    return np.clip(rng.integers(0, 48, (height, width, 3)) + ramp, 0, 255).astype(np.uint8)


def levels(image: np.ndarray, count: int) -> list[np.ndarray]:
    """``image`` and ``count - 1`` halvings of it."""
    return [np.ascontiguousarray(image[:: 2**n, :: 2**n]) for n in range(count)]


def make_svs(path: Path, size: tuple[int, int] = (1536, 1024), count: int = 3, seed: int = 1) -> list[np.ndarray]:
    """An Aperio SVS: the levels (tiled JPEG with shared tables), a thumbnail, a label (LZW) and a macro
    image, in the page order Aperio writes; the levels' pixels as written."""
    pyramid = levels(tissue(size, seed), count)
    with tifffile.TiffWriter(path) as tif:
        for number, level in enumerate(pyramid):
            height, width = level.shape[:2]
            description = (f"{APERIO}{size[0]}x{size[1]} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q=90"
                           f"|AppMag = 20|MPP = {MPP * 2**number}")
            tif.write(level, tile=(TILE, TILE), **JPEG, metadata=None,
                      description=description)
            if number == 0:
                thumbnail = np.ascontiguousarray(pyramid[0][::8, ::8])
                tif.write(thumbnail, compression="jpeg", photometric="rgb", metadata=None,
                          description=f"{APERIO}{width}x{height} -> {width // 8}x{height // 8} - |")
        tif.write(tissue((200, 100), seed + 1), compression="lzw", photometric="rgb", metadata=None,
                  subfiletype=1, description=f"{APERIO}label 200x100")
        tif.write(tissue((300, 120), seed + 2), compression="jpeg", photometric="rgb", metadata=None,
                  subfiletype=9, description=f"{APERIO}macro 300x120")
    return pyramid


def make_ome_tiff(path: Path, size: tuple[int, int] = (1536, 1024), count: int = 3, seed: int = 2) -> list[np.ndarray]:
    """An OME-TIFF pyramid (reduced levels as sub-IFDs) of tiled JPEG; the levels' pixels as written."""
    pyramid = levels(tissue(size, seed), count)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(pyramid[0], tile=(TILE, TILE), **JPEG, subifds=count - 1,
                  metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP})
        for level in pyramid[1:]:
            tif.write(level, tile=(TILE, TILE), **JPEG, subfiletype=1)
    return pyramid


def make_pyramidal_tiff(path: Path, size: tuple[int, int] = (1536, 1024), count: int = 3,
                        seed: int = 3) -> list[np.ndarray]:
    """A plain pyramidal TIFF (no scanner's description; resolution in the TIFF tags); the levels' pixels."""
    pyramid = levels(tissue(size, seed), count)
    per_cm = 1e4 / MPP
    with tifffile.TiffWriter(path) as tif:
        tif.write(pyramid[0], tile=(TILE, TILE), **JPEG, subifds=count - 1,
                  metadata=None, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
        for level in pyramid[1:]:
            tif.write(level, tile=(TILE, TILE), **JPEG, subfiletype=1,
                      metadata=None)
    return pyramid


def source_tiles(path: Path, level: int) -> list[tuple[bytes, bytes | None]]:
    """(tile bytes, the page's JPEG tables) of every tile of pyramid ``level``, row by row."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        tif.filehandle.seek(0)
        tiles = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            tif.filehandle.seek(offset)
            tiles.append((tif.filehandle.read(count), page.jpegtables))
        return tiles
