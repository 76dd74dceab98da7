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


def make_svs(path: Path, size: tuple[int, int] = (1536, 1024), count: int = 3, seed: int = 1,
             icc: bytes | None = None) -> list[np.ndarray]:
    """An Aperio SVS: the levels (tiled JPEG with shared tables), a thumbnail, a label (LZW) and a macro
    image, in the page order Aperio writes, the levels with ``icc`` as their ICC profile (TIFF tag 34675) if
    given; the levels' pixels as written."""
    pyramid = levels(tissue(size, seed), count)
    with tifffile.TiffWriter(path) as tif:
        for number, level in enumerate(pyramid):
            height, width = level.shape[:2]
            description = (f"{APERIO}{size[0]}x{size[1]} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q=90"
                           f"|AppMag = 20|MPP = {MPP * 2**number}")
            tif.write(level, tile=(TILE, TILE), **JPEG, metadata=None, iccprofile=icc,
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


def make_vms(path: Path, size: tuple[int, int] = (1024, 768), grid: tuple[int, int] = (2, 2),
             seed: int = 4) -> np.ndarray:
    """A Hamamatsu VMS, a format only OpenSlide reads: the key file ``path`` (``[Virtual Microscope Specimen]``)
    and, beside it, the JPEG images that tile the base level (``grid`` columns and rows), the map image (an eighth
    of the size; OpenSlide makes it a level) and the macro image; the base level's pixels as the JPEGs decode.

    OpenSlide reads a VMS JPEG a restart interval at a time: each JPEG needs restart markers and
    a whole number of intervals in an MCU row. Written 4:2:2 (16x8 MCUs, an interval every 16),
    as OpenSlide 4.0 decodes 4:2:0 intervals wrong at full scale ("found marker 0xd9 instead of
    RST0"). The optimisation file, which only spares OpenSlide a scan for the markers, is left out.
    """
    from PIL import Image

    columns, rows = grid
    width, height = size[0] // columns, size[1] // rows
    assert width % 256 == 0 and height % 8 == 0, "whole restart intervals (256 x 8 pixels) in each JPEG"
    image = tissue(size, seed)
    stem = path.stem
    jpeg = {"format": "JPEG", "quality": 90, "subsampling": 1}  # 1: 4:2:2
    decoded = np.empty_like(image)
    keys = ["[Virtual Microscope Specimen]", "NoLayers=1", f"NoJpegColumns={columns}", f"NoJpegRows={rows}"]
    for row in range(rows):
        for column in range(columns):
            name = f"{stem}({column},{row}).jpg"
            part = (slice(row * height, (row + 1) * height), slice(column * width, (column + 1) * width))
            Image.fromarray(np.ascontiguousarray(image[part])).save(path.parent / name, **jpeg,
                                                                    restart_marker_blocks=16)
            with Image.open(path.parent / name) as written:
                decoded[part] = np.asarray(written.convert("RGB"))
            keys.append(f"ImageFile({column},{row})={name}")
    Image.fromarray(np.ascontiguousarray(decoded[::8, ::8])).save(path.parent / f"{stem}_map2.jpg", **jpeg,
                                                                  restart_marker_blocks=size[0] // 8 // 16)
    Image.fromarray(tissue((300, 120), seed + 1)).save(path.parent / f"{stem}_macro.jpg", format="JPEG", quality=90)
    keys += [f"MapFile={stem}_map2.jpg", f"MacroImage={stem}_macro.jpg", "SourceLens=20",
             f"PhysicalWidth={round(size[0] * MPP * 1000)}", f"PhysicalHeight={round(size[1] * MPP * 1000)}"]  # nm
    path.write_text("\r\n".join(keys) + "\r\n")
    return decoded
