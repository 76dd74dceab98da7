"""Rendered images (PS3.18 §8.3.5 and §10.4.1.1.3): query parameters, geometry, pixels for display.

A rendered image is the instance's pixels as a consumer image format (JPEG, PNG, GIF, WebP),
made for display: monochrome windowed to 8 bits, colour as RGB, optionally colour-managed
with the instance's ICC profile. A tiled whole-slide level is never decoded whole: the
caller composes the requested region (``viewport=vw,vh,sx,sy,sw,sh``) from the tiles that
intersect it, each decoded, cropped and scaled straight into an output-sized canvas.
CPU-heavy: run with :func:`dicomweb.cpu.run`.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping

import imagecodecs
import numpy as np
from PIL import Image, ImageCms

from dicomweb.dicom.codecs import PixelFormat
from dicomweb.dicom.syntax import bounded_int
from dicomweb.errors import BadRequest, NotAcceptable

JPEG, PNG, GIF, WEBP = "image/jpeg", "image/png", "image/gif", "image/webp"
#: Media types of rendered answers, the default first (PS3.18 Table 8.7.4-1, plus WebP).
MEDIA_TYPES = (JPEG, PNG, GIF, WEBP)
_PILLOW_FORMATS = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF", WEBP: "WEBP"}
DEFAULT_QUALITY = 90
#: The largest side a viewport may ask for.
MAX_VIEWPORT_SIDE = 16384
ICC_CHOICES = ("no", "yes", "srgb", "adobergb", "rommrgb")
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]``: the output box, and the source region (negative sw/sh flip)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Window:
    """``window=center,width,function`` (PS3.3 §C.11.2.1.2) for monochrome images."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class RenderParams:
    """Everything that decides a rendered answer's bytes besides the pixels."""

    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    viewport: Viewport | None = None
    icc: str = "no"
    window: Window | None = None


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} takes numbers, not {text!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} takes finite numbers")
    return value


def parse_params(query: Mapping[str, str], media_type: str) -> RenderParams:
    """The rendering parameters of a request (PS3.18 §8.3.5.1); 400 for anything else."""
    unknown = sorted(set(query) - {"quality", "viewport", "iccprofile", "window"})
    if unknown:
        raise BadRequest(f"rendered resources take quality, viewport, iccprofile and window, not {unknown[0]}")
    quality = DEFAULT_QUALITY
    if "quality" in query:
        parsed = bounded_int(query["quality"].strip(), 1, 100)
        if parsed is None:
            raise BadRequest("quality is an integer from 1 to 100")
        quality = parsed
    viewport = None
    if "viewport" in query:
        items = [item.strip() for item in query["viewport"].split(",")]
        if len(items) not in (2, 6):
            raise BadRequest("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
        width, height = (bounded_int(item, 1, MAX_VIEWPORT_SIDE) for item in items[:2])
        if width is None or height is None:
            raise BadRequest(f"viewport width and height are integers from 1 to {MAX_VIEWPORT_SIDE}")
        region = None
        if len(items) == 6:
            try:
                sx, sy, sw, sh = (int(item) for item in items[2:])
            except ValueError:
                raise BadRequest("viewport sx,sy,sw,sh are integers (pixels of the source image)") from None
            if sx < 0 or sy < 0 or sw == 0 or sh == 0:
                raise BadRequest("viewport sx and sy are at least 0, and sw and sh are not 0")
            region = (sx, sy, sw, sh)
        viewport = Viewport(width, height, region)
    icc = query.get("iccprofile", "no").strip().lower()
    if icc not in ICC_CHOICES:
        raise BadRequest(f"iccprofile is one of {', '.join(ICC_CHOICES)}")
    window = None
    if "window" in query:
        items = [item.strip() for item in query["window"].split(",")]
        if len(items) not in (2, 3):
            raise BadRequest("window is center,width[,function]")
        center, width = _number(items[0], "window"), _number(items[1], "window")
        function = items[2].lower() if len(items) == 3 else "linear"
        if width <= 0 or function not in WINDOW_FUNCTIONS:
            raise BadRequest(f"window width is above 0 and its function one of {', '.join(WINDOW_FUNCTIONS)}")
        window = Window(center, width, function)
    return RenderParams(media_type, quality, viewport, icc, window)


def _value(dataset: Mapping[str, Any], tag: str, default: Any = None) -> Any:
    values = dataset.get(tag, {}).get("Value")
    return values[0] if values else default


@dataclass(frozen=True)
class Geometry:
    """Where each frame lies in the image: a grid of tiles (TILED_FULL), listed positions (TILED_SPARSE),
    or one frame that is the whole image."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    #: 1-based frame number of each tile position (row-major over the tile grid; 0: no frame there).
    grid: np.ndarray

    @property
    def columns(self) -> int:
        return self.grid.shape[1]

    @classmethod
    def single(cls, columns: int, rows: int) -> "Geometry":
        """An image that is one frame."""
        return cls(columns, rows, columns, rows, np.ones((1, 1), np.int32))

    def frames_in(self, x: int, y: int, width: int, height: int) -> list[tuple[int, int, int]]:
        """(frame, tile column, tile row) of every tile that intersects a region, row by row."""
        first_col, last_col = x // self.tile_width, (x + width - 1) // self.tile_width
        first_row, last_row = y // self.tile_height, (y + height - 1) // self.tile_height
        found = []
        for row in range(first_row, min(last_row, self.grid.shape[0] - 1) + 1):
            for col in range(first_col, min(last_col, self.grid.shape[1] - 1) + 1):
                if self.grid[row, col]:
                    found.append((int(self.grid[row, col]), col, row))
        return found


def geometry(dataset: Mapping[str, Any], frames: int) -> Geometry:
    """The geometry of an instance from its DICOM JSON (PS3.3 §C.8.12.4: the Multi-frame Dimension module)."""
    rows, columns = int(_value(dataset, "00280010", 0)), int(_value(dataset, "00280011", 0))
    total_columns = _value(dataset, "00480006")
    total_rows = _value(dataset, "00480007")
    if not total_columns or not total_rows or frames <= 1 or not rows or not columns:
        return Geometry.single(columns, rows)
    width, height = int(total_columns), int(total_rows)
    grid = np.zeros((math.ceil(height / rows), math.ceil(width / columns)), np.int32)
    organisation = _value(dataset, "00209311", "")
    if organisation == "TILED_FULL" or "52009230" not in dataset:
        # Row-major tiles of the first focal plane and optical path come first (PS3.3 §C.8.12.4.1.7).
        count = min(grid.size, frames)
        grid.reshape(-1)[:count] = np.arange(1, count + 1, dtype=np.int32)
    else:
        for number, item in enumerate(dataset["52009230"].get("Value", []), 1):
            position = (item.get("0040071A", {}).get("Value") or [{}])[0]
            column = _value(position, "0048021E")
            row = _value(position, "0048021F")
            if column is None or row is None:
                continue
            tile_row, tile_column = (int(row) - 1) // rows, (int(column) - 1) // columns
            if 0 <= tile_row < grid.shape[0] and 0 <= tile_column < grid.shape[1] and not grid[tile_row, tile_column]:
                grid[tile_row, tile_column] = number
    return Geometry(width, height, columns, rows, grid)


@dataclass(frozen=True)
class Plan:
    """A rendering worked out before any pixel is read: the source region, the output size, the tiles."""

    region: tuple[int, int, int, int]  # x, y, width, height in the source (not flipped)
    flip: tuple[bool, bool]
    size: tuple[int, int]
    tiles: list[tuple[int, int, int]]


def check_budget(frames: int, max_frames: int) -> None:
    """400 for a rendering that would decode more than ``max_frames`` frames."""
    if frames > max_frames:
        raise BadRequest(f"that rendering needs {frames} frames, above the {max_frames} allowed "
                         "(DICOMWEB_MAX_RENDERED_FRAMES); ask for a region or a smaller viewport")


def plan(geo: Geometry, viewport: Viewport | None, max_pixels: int, max_frames: int | None = None) -> Plan:
    """The region, output size (the region scaled to fit the viewport, aspect kept) and tiles; 400 beyond the limits.

    ``max_frames`` None leaves the frame budget to the caller (a smaller pyramid level may need fewer).
    """
    if viewport is not None and viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        x, width = (sx + sw, -sw) if sw < 0 else (sx, sw)
        y, height = (sy + sh, -sh) if sh < 0 else (sy, sh)
        x, y = max(x, 0), max(y, 0)
        width, height = min(width, geo.width - x), min(height, geo.height - y)
        if width <= 0 or height <= 0:
            raise BadRequest(f"the viewport region lies outside the {geo.width}×{geo.height} image")
        flip = (sw < 0, sh < 0)
    else:
        x, y, width, height, flip = 0, 0, geo.width, geo.height, (False, False)
    if viewport is not None:
        scale = min(viewport.width / width, viewport.height / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        size = (width, height)
    if size[0] * size[1] > max_pixels:
        raise BadRequest(f"a rendered image of {size[0]}×{size[1]} is above the {max_pixels} pixels allowed "
                         "(DICOMWEB_MAX_RENDERED_PIXELS); ask for a smaller viewport")
    tiles = geo.frames_in(x, y, width, height)
    if max_frames is not None:
        check_budget(len(tiles), max_frames)
    return Plan((x, y, width, height), flip, size, tiles)


def scaled(plan_: Plan, factor: float, geo: Geometry) -> Plan:
    """``plan_`` moved to a pyramid level ``factor`` times the size of the one it was made for."""
    x, y, width, height = plan_.region
    region = (int(x * factor), int(y * factor), max(1, round(width * factor)), max(1, round(height * factor)))
    region = (min(region[0], geo.width - 1), min(region[1], geo.height - 1),
              min(region[2], geo.width - min(region[0], geo.width - 1)),
              min(region[3], geo.height - min(region[1], geo.height - 1)))
    return Plan(region, plan_.flip, plan_.size, geo.frames_in(*region))


def display(image: np.ndarray, fmt: PixelFormat, dataset: Mapping[str, Any], window: Window | None) -> np.ndarray:
    """Decoded pixels as 8-bit samples for display: colour as RGB, monochrome windowed (PS3.3 §C.11.2)."""
    photometric = fmt.photometric
    if photometric == "PALETTE COLOR":
        raise NotAcceptable("PALETTE COLOR images are not rendered here")
    if fmt.samples == 3:
        if image.dtype == np.uint8:
            return image
        return (image.astype(np.float32) * (255 / (2**fmt.bits_stored - 1))).clip(0, 255).astype(np.uint8)
    values = image.astype(np.float32) * float(_value(dataset, "00281053", 1) or 1) + float(
        _value(dataset, "00281052", 0) or 0)
    if window is None:
        center, width = _value(dataset, "00281050"), _value(dataset, "00281051")
        if center is not None and width:
            window = Window(float(center), float(width), str(_value(dataset, "00281056", "LINEAR")).lower())
    if window is None:
        low, high = (-(2 ** (fmt.bits_stored - 1)), 2 ** (fmt.bits_stored - 1) - 1) if fmt.signed else (
            0, 2**fmt.bits_stored - 1)
        out = (values - low) / max(high - low, 1)
    elif window.function == "sigmoid":
        out = 1 / (1 + np.exp(-4 * (values - window.center) / window.width))
    elif window.function == "linear-exact":
        out = (values - (window.center - window.width / 2)) / window.width
    else:  # PS3.3 §C.11.2.1.2.1
        out = (values - (window.center - 0.5)) / (window.width - 1 or 1) + 0.5
    out = np.clip(out, 0, 1) * 255
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.rint(out).astype(np.uint8)


def paste(canvas: np.ndarray, tile: np.ndarray, column: int, row: int, geo: Geometry, plan_: Plan) -> None:
    """Scale the part of one display-ready tile that lies in the plan's region into its place on the canvas."""
    x, y, width, height = plan_.region
    scale_x, scale_y = plan_.size[0] / width, plan_.size[1] / height
    left, top = column * geo.tile_width, row * geo.tile_height
    x0, y0 = max(left, x), max(top, y)
    x1, y1 = min(left + tile.shape[1], x + width, geo.width), min(top + tile.shape[0], y + height, geo.height)
    if x1 <= x0 or y1 <= y0:
        return
    out_x0, out_x1 = round((x0 - x) * scale_x), round((x1 - x) * scale_x)
    out_y0, out_y1 = round((y0 - y) * scale_y), round((y1 - y) * scale_y)
    if out_x1 <= out_x0 or out_y1 <= out_y0:
        return
    piece = tile[y0 - top : y1 - top, x0 - left : x1 - left]
    if (out_x1 - out_x0, out_y1 - out_y0) != (piece.shape[1], piece.shape[0]):
        piece = np.asarray(Image.fromarray(piece).resize((out_x1 - out_x0, out_y1 - out_y0),
                                                         Image.Resampling.LANCZOS))
    canvas[out_y0:out_y1, out_x0:out_x1] = piece


@functools.cache
def _profile(name: str) -> bytes:
    """The output profile ``iccprofile`` names (sRGB from lcms2, the others from their primaries)."""
    if name == "srgb":
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if name == "adobergb":  # Adobe RGB (1998): D65, gamma 563/256
        return imagecodecs.cms_profile("rgb", whitepoint=[0.3127, 0.3290, 1.0],
                                       primaries=[0.64, 0.33, 1.0, 0.21, 0.71, 1.0, 0.15, 0.06, 1.0], gamma=2.19921875)
    return imagecodecs.cms_profile("rgb", whitepoint=[0.3457, 0.3585, 1.0],  # ROMM RGB: D50, gamma 1.8
                                   primaries=[0.7347, 0.2653, 1.0, 0.1596, 0.8404, 1.0, 0.0366, 0.0001, 1.0], gamma=1.8)


def colour_manage(image: Image.Image, icc: str, instance_profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Apply ``iccprofile`` (PS3.18 §8.3.5.1.5): the pixels to embed and the profile to embed with them.

    ``no``: pixels as stored, no profile. ``yes``: pixels as stored, the instance's profile.
    ``srgb`` (and ``adobergb``, ``rommrgb``): pixels transformed from the instance's profile
    (sRGB assumed when it has none) to that space, whose profile goes with them.
    """
    if icc == "no" or image.mode != "RGB":
        return image, None
    if icc == "yes":
        return image, instance_profile
    target = _profile(icc)
    if instance_profile is not None and instance_profile != target:
        transform = _transform(instance_profile, target)
        image = ImageCms.applyTransform(image, transform)
    return image, target


@functools.lru_cache(maxsize=32)
def _transform(source: bytes, target: bytes) -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(source)),
                                   ImageCms.ImageCmsProfile(io.BytesIO(target)), "RGB", "RGB",
                                   renderingIntent=ImageCms.Intent.PERCEPTUAL)


def encode(canvas: np.ndarray, params: RenderParams, instance_profile: bytes | None) -> bytes:
    """The composed canvas as the asked media type, colour-managed as ``iccprofile`` asks.

    Without a profile to embed, JPEG, PNG and WebP are encoded by imagecodecs straight from
    the array (no image object, no copy); Pillow embeds profiles and writes GIF.
    """
    if params.icc == "no" or canvas.ndim == 2:
        if params.media_type == JPEG:
            return bytes(imagecodecs.jpeg8_encode(canvas, level=params.quality))
        if params.media_type == PNG:
            return bytes(imagecodecs.png_encode(canvas, level=1))
        if params.media_type == WEBP:
            return bytes(imagecodecs.webp_encode(canvas, level=params.quality))
    image = Image.fromarray(canvas)
    image, profile = colour_manage(image, params.icc, instance_profile)
    out = io.BytesIO()
    options: dict[str, Any] = {}
    if profile is not None:
        options["icc_profile"] = profile
    if params.media_type in (JPEG, WEBP):
        options["quality"] = params.quality
    image.save(out, _PILLOW_FORMATS[params.media_type], **options)
    return out.getvalue()


def flipped(canvas: np.ndarray, flip: tuple[bool, bool]) -> np.ndarray:
    """The canvas mirrored where the viewport's sw or sh was negative."""
    if not any(flip):
        return canvas
    if flip[0]:
        canvas = canvas[:, ::-1]
    if flip[1]:
        canvas = canvas[::-1]
    return np.ascontiguousarray(canvas)
