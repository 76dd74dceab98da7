"""Whole-slide test data made with real libraries: pydicom writes, Pillow / imagecodecs encode.

A slide is one series of VL Whole Slide Microscopy Image instances (PS3.3 §A.32.8):
a TILED_FULL pyramid (level 0 first) and the label, overview and thumbnail images,
with textured pixels so compressed frames differ and have realistic sizes. Every
pixel-data layout the service must index is available: JPEG baseline, JPEG 2000
(lossless and lossy) and native; Basic Offset Table, Extended Offset Table, empty
BOT, and frames split over several fragments.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, ImageCms
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_encoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    VLWholeSlideMicroscopyImageStorage,
    generate_uid,
)

TILE = 256
#: Every transfer syntax a slide can be written in, and the lossy ones with their compression method.
SYNTAXES = (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
            HTJ2KLossless, HTJ2K, RLELossless, ExplicitVRLittleEndian)
LOSSY_METHODS = {JPEG2000: "ISO_15444_1", JPEGLSNearLossless: "ISO_14495_1", HTJ2K: "ISO_15444_15"}


@dataclass(frozen=True)
class SlideFile:
    """One written instance and what the tests need to know about it."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    image_type: tuple[str, ...]
    transfer_syntax: str
    number_of_frames: int
    offset_table: str  # "bot" | "eot" | "empty" | "native"
    fragments_per_frame: int
    #: The pixels each frame was encoded from (rows, columns, 3), where the factory made them.
    tiles: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)


def textured_tile(size: tuple[int, int], seed: int, noise: float = 12.0) -> np.ndarray:
    """A deterministic RGB image (rows, columns, 3) with stripes, gradients and noise of ``noise`` sigma."""
    columns, rows = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    phase = seed * 0.7
    red = 150 + 70 * np.sin(x / (9 + seed % 5) + phase) * np.cos(y / 13)
    green = 110 + 60 * np.cos((x + y) / (17 + seed % 7) + phase)
    blue = 170 + 50 * np.sin(np.hypot(x - columns / 2, y - rows / 2) / 11 + phase)
    image = np.stack([red, green, blue], axis=-1) + rng.normal(0, noise, (rows, columns, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@functools.cache
def srgb_profile() -> bytes:
    """The sRGB ICC profile lcms2 builds (what most scanners embed); made once, as it carries a timestamp."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@functools.cache
def wide_gamut_profile() -> bytes:
    """An RGB ICC profile with Adobe RGB (1998) primaries and gamma 2.2: not sRGB, so colour management shows."""
    return imagecodecs.cms_profile("rgb", whitepoint=[0.3127, 0.3290, 1.0],
                                   primaries=[0.64, 0.33, 1.0, 0.21, 0.71, 1.0, 0.15, 0.06, 1.0], gamma=2.2)


def _encode(tile: np.ndarray, transfer_syntax: str) -> bytes:
    """One frame in ``transfer_syntax``; native frames are the raw interleaved RGB bytes."""
    if transfer_syntax == JPEGBaseline8Bit:
        out = io.BytesIO()
        Image.fromarray(tile).save(out, "JPEG", quality=85, subsampling=1)
        return out.getvalue()
    if transfer_syntax == JPEG2000Lossless:
        return bytes(imagecodecs.jpeg2k_encode(tile, level=0, codecformat="j2k", reversible=True, mct=True))
    if transfer_syntax == JPEG2000:
        return bytes(imagecodecs.jpeg2k_encode(tile, level=38, codecformat="j2k", reversible=False, mct=True))
    if transfer_syntax == ExplicitVRLittleEndian:
        return tile.tobytes()
    if transfer_syntax == JPEGLosslessSV1:
        return bytes(imagecodecs.jpeg8_encode(tile, lossless=True, predictor=1))
    if transfer_syntax in (JPEGLSLossless, JPEGLSNearLossless):
        return bytes(imagecodecs.jpegls_encode(tile, level=0 if transfer_syntax == JPEGLSLossless else 3))
    if transfer_syntax == HTJ2KLossless:
        return bytes(imagecodecs.htj2k_encode(tile, reversible=True))
    if transfer_syntax == HTJ2K:
        return bytes(imagecodecs.htj2k_encode(tile, level=0.01, reversible=False))
    if transfer_syntax == RLELossless:
        return get_encoder(RLELossless).encode(
            tile.tobytes(), rows=tile.shape[0], columns=tile.shape[1], samples_per_pixel=3, bits_allocated=8,
            bits_stored=8, pixel_representation=0, photometric_interpretation="RGB", planar_configuration=0,
            number_of_frames=1, byteorder="<", encoding_plugin="pydicom")
    raise ValueError(f"unsupported transfer syntax {transfer_syntax}")


def _photometric(transfer_syntax: str) -> str:
    """What scanners declare: JPEG in YCbCr 4:2:2, JPEG 2000 with its reversible or irreversible colour transform."""
    return {JPEGBaseline8Bit: "YBR_FULL_422", JPEG2000Lossless: "YBR_RCT", JPEG2000: "YBR_ICT"}.get(
        transfer_syntax, "RGB")


def _tiles(image: np.ndarray, tile: int) -> list[np.ndarray]:
    """Row-major tiles of ``image`` (TILED_FULL order), edge tiles padded with white."""
    rows, columns = image.shape[:2]
    grid_rows, grid_columns = math.ceil(rows / tile), math.ceil(columns / tile)
    padded = np.full((grid_rows * tile, grid_columns * tile, 3), 255, np.uint8)
    padded[:rows, :columns] = image
    return [padded[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile].copy()
            for r in range(grid_rows) for c in range(grid_columns)]


def _pixel_data(frames: list[bytes], transfer_syntax: str, offset_table: str,
                fragments_per_frame: int) -> tuple[bytes, dict[str, bytes]]:
    """Pixel Data in the requested layout, and the extended offset table elements if any."""
    if transfer_syntax == ExplicitVRLittleEndian:
        return b"".join(frames), {}
    if offset_table == "eot" and fragments_per_frame == 1:
        data, offsets, lengths = encapsulate_extended(frames)
        return data, {"ExtendedOffsetTable": offsets, "ExtendedOffsetTableLengths": lengths}
    if offset_table == "eot":
        raise ValueError("an extended offset table here has one fragment per frame")
    return encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=offset_table == "bot"), {}


def _layout(transfer_syntax: str, offset_table: str, fragments_per_frame: int) -> str:
    """The offset table a slide really gets: native pixel data has none, so "bot" means "native" there."""
    native = transfer_syntax == ExplicitVRLittleEndian
    if native and offset_table in ("bot", "native") and fragments_per_frame == 1:
        return "native"
    if not native and offset_table in ("bot", "eot", "empty") and fragments_per_frame >= 1:
        return offset_table
    raise ValueError(f"no {offset_table!r} layout with {fragments_per_frame} fragment(s) for {transfer_syntax}")


def _base_dataset(study_uid: str, series_uid: str, frame_of_reference: str, patient_id: str,
                  patient_name: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20260101101500"
    ds.AccessionNumber = "ACC-" + patient_id
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality = "SM"
    ds.SeriesNumber = 1
    ds.Manufacturer = "dicomweb tests"
    ds.ManufacturerModelName = "wsi_factory"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = "1"
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.ContainerIdentifier = "SLIDE-" + patient_id
    ds.IssuerOfTheContainerIdentifierSequence = []
    container_type = Dataset()
    container_type.CodeValue, container_type.CodingSchemeDesignator = "433466003", "SCT"
    container_type.CodeMeaning = "Microscope slide"
    ds.ContainerTypeCodeSequence = [container_type]
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SPECIMEN-" + patient_id
    specimen.SpecimenUID = generate_uid(entropy_srcs=[study_uid, "specimen"])
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.AcquisitionContextSequence = []
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = generate_uid(entropy_srcs=[series_uid, "dim"])
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def _optical_path(icc_profile: bytes | None) -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    illumination = Dataset()
    illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
    illumination.CodeMeaning = "Brightfield illumination"
    path.IlluminationTypeCodeSequence = [illumination]
    color = Dataset()
    color.CodeValue, color.CodingSchemeDesignator, color.CodeMeaning = "414298005", "SCT", "Full Spectrum"
    path.IlluminationColorCodeSequence = [color]
    if icc_profile is not None:
        path.ICCProfile = icc_profile
        if icc_profile == srgb_profile():
            path.ColorSpace = "SRGB"
    return path


def _image_attributes(ds: Dataset, size: tuple[int, int], tile: tuple[int, int], frames: int,
                      spacing_mm: float, image_type: tuple[str, ...], icc_profile: bytes | None) -> None:
    """Attributes of one image: its matrix, tiling, pixel spacing and optical path."""
    width, height = size
    ds.ImageType = list(image_type)
    ds.Rows, ds.Columns = tile[1], tile[0]
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.NumberOfFrames = frames
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImagedVolumeWidth = width * spacing_mm
    ds.ImagedVolumeHeight = height * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    measures.SpacingBetweenSlices = 0.001
    frame_type = Dataset()
    frame_type.FrameType = list(image_type)
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    shared.OpticalPathIdentificationSequence = [optical]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.OpticalPathSequence = [_optical_path(icc_profile)]


def _add_file_meta(ds: Dataset, transfer_syntax: str) -> None:
    """The Part 10 file meta group, so files carry a preamble and their transfer syntax."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID


def _write(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    _add_file_meta(ds, transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _instance(directory: Path, base: Dataset, number: int, image: np.ndarray, tile: int, spacing_mm: float,
              image_type: tuple[str, ...], transfer_syntax: str, offset_table: str, fragments: int,
              icc_profile: bytes | None) -> SlideFile:
    ds = base.copy()
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    tiles = _tiles(image, tile)
    encoded = [_encode(t, transfer_syntax) for t in tiles]
    _image_attributes(ds, (image.shape[1], image.shape[0]), (tile, tile), len(tiles), spacing_mm, image_type,
                      icc_profile)
    ds.PhotometricInterpretation = _photometric(transfer_syntax)
    if image_type[2] == "LABEL":
        ds.SpecimenLabelInImage = ds.BurnedInAnnotation = "YES"
    if transfer_syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = 10.0
    elif transfer_syntax in LOSSY_METHODS:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = LOSSY_METHODS[transfer_syntax]
        ds.LossyImageCompressionRatio = 10.0
    else:
        ds.LossyImageCompression = "00"
    pixel_data, extended = _pixel_data(encoded, transfer_syntax, offset_table, fragments)
    for keyword, value in extended.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_data
    if transfer_syntax != ExplicitVRLittleEndian:
        ds["PixelData"].VR = "OB"
    path = directory / f"{number:02d}-{image_type[2].lower()}.dcm"
    _write(ds, path, transfer_syntax)
    return SlideFile(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, image_type,
                     transfer_syntax, len(tiles), offset_table, fragments, tuple(tiles))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def make_slide(directory: Path, *, transfer_syntax: str = JPEGBaseline8Bit, offset_table: str = "bot",
               fragments_per_frame: int = 1, levels: int = 3, base_size: tuple[int, int] = (1024, 768),
               tile_size: int = TILE, associated: bool | tuple[str, ...] = True, study_uid: str | None = None,
               patient_id: str = "P-1", patient_name: str = "Doe^Jane",
               with_icc_profile: bool = True, noise: float = 12.0, wide_gamut: bool = False) -> list[SlideFile]:
    """Write one slide (pyramid levels first, then label, overview, thumbnail) into ``directory``.

    ``noise`` is the sigma of the pixel noise: the default gives realistic compressed sizes, a low
    one an image lossy codecs keep above 40 dB PSNR. ``wide_gamut`` embeds :func:`wide_gamut_profile`
    instead of sRGB. ``associated`` is True for a label, an overview and a thumbnail, or the Image Type
    flavours of those wanted (``("OVERVIEW",)``).
    """
    icc_profile = (wide_gamut_profile() if wide_gamut else srgb_profile()) if with_icc_profile else None
    offset_table = _layout(transfer_syntax, offset_table, fragments_per_frame)
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    base = _base_dataset(study_uid, generate_uid(), generate_uid(), patient_id, patient_name)
    width, height = base_size
    image = textured_tile((width, height), seed=int(study_uid.replace(".", "")[-6:]) % 997, noise=noise)
    spacing = 0.00025
    files = []
    for level in range(levels):
        size = (math.ceil(width / 2**level), math.ceil(height / 2**level))
        level_image = image if level == 0 else _resize(image, size)
        image_type = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE") if level == 0 else (
            "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")
        files.append(_instance(directory, base, level + 1, level_image, tile_size, spacing * 2**level, image_type,
                               transfer_syntax, offset_table, fragments_per_frame, icc_profile))
    wanted = ("LABEL", "OVERVIEW", "THUMBNAIL") if associated is True else associated or ()
    if wanted:
        label = textured_tile((200, 120), seed=11)
        overview = textured_tile((240, 160), seed=12)
        # A sixth of the base: no pyramid level has that size (a viewer takes an image as big as a
        # level for a level, and refuses two of one size outside a concatenation).
        thumbnail = _resize(image, (max(width // 6, 1), max(height // 6, 1)))
        pictures = ((label, ("ORIGINAL", "PRIMARY", "LABEL", "NONE")),
                    (overview, ("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE")),
                    (thumbnail, ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED")))
        for number, (picture, kind) in enumerate(((p, k) for p, k in pictures if k[2] in wanted), start=levels + 1):
            tile = max(picture.shape[0], picture.shape[1])
            files.append(_instance(directory, base, number, picture, tile, spacing * width / picture.shape[1],
                                   kind, transfer_syntax, offset_table, fragments_per_frame, icc_profile))
    return files


def _jpeg_pool(count: int, quality: int) -> list[bytes]:
    tiles = []
    for seed in range(count):
        out = io.BytesIO()
        Image.fromarray(textured_tile((TILE, TILE), seed)).save(out, "JPEG", quality=quality, subsampling=1)
        tiles.append(out.getvalue())
    return tiles


def _padded(jpeg: bytes, number: int, size: int) -> bytes:
    """``jpeg`` grown to exactly ``size`` bytes with COM segments after SOI that name the frame.

    The filler is spread evenly over as few segments as the 64 KiB segment limit allows,
    so no segment is ever shorter than its 4-byte marker and length.
    """
    filler = size - len(jpeg)
    if filler < 4:
        raise ValueError(f"a {len(jpeg)}-byte JPEG cannot be grown to {size} bytes")
    count = math.ceil(filler / (4 + 65533))
    label = f"frame {number} ".encode()
    segments = []
    for index in range(count):
        payload = filler // count + (index < filler % count) - 4
        body = (label * (payload // len(label) + 1))[:payload]
        segments.append(b"\xff\xfe" + struct.pack(">H", payload + 2) + body)
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _grid(frames: int) -> tuple[int, int]:
    """(columns, rows) of tiles with columns × rows == frames, as square as the count allows.

    TILED_FULL requires exactly one frame per tile, so the grid is the most square
    factorisation (20,000 frames: 160 × 125), never a rounded-up square.
    """
    rows = next(r for r in range(math.isqrt(frames), 0, -1) if frames % r == 0)
    return frames // rows, rows


def make_large_instance(path: Path, *, frames: int = 20000, frame_bytes: int = 54000,
                        transfer_syntax: str = JPEGBaseline8Bit, study_uid: str | None = None) -> SlideFile:
    """Stream a big tiled JPEG instance to ``path`` without holding its frames in memory.

    Frames come from a pool of real JPEG tiles, each grown to ``frame_bytes`` with a
    comment segment naming its number, so every frame is a distinct valid JPEG.
    """
    if transfer_syntax != JPEGBaseline8Bit:
        raise ValueError("large instances are JPEG baseline")
    columns, rows = _grid(frames)
    study_uid = study_uid or generate_uid()
    ds = _base_dataset(study_uid, generate_uid(), generate_uid(), "P-LARGE", "Large^Slide")
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    image_type = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
    _image_attributes(ds, (columns * TILE, rows * TILE), (TILE, TILE), frames, 0.00025, image_type, srgb_profile())
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    _add_file_meta(ds, transfer_syntax)
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    pool = _jpeg_pool(64, quality=50 if frame_bytes < 30000 else 85)
    frame_size = frame_bytes + frame_bytes % 2
    if max(map(len, pool)) + 4 > frame_size:
        raise ValueError(f"frame_bytes {frame_bytes} is below the size of a real JPEG tile")
    item_size = frame_size + 8
    with_bot = frames * item_size < 2**32
    with path.open("wb") as out:
        out.write(header.getvalue())
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        if with_bot:
            out.write(struct.pack(f"<HHI{frames}I", 0xFFFE, 0xE000, 4 * frames, *range(0, frames * item_size, item_size)))
        else:
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for number in range(1, frames + 1):
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, frame_size))
            out.write(_padded(pool[number % len(pool)], number, frame_size))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return SlideFile(path, study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID, image_type, transfer_syntax, frames,
                     "bot" if with_bot else "empty", 1)


def make_sparse_instance(path: Path, frames: int) -> SlideFile:
    """A TILED_SPARSE instance of ``frames`` 1-pixel native frames: a header of one functional group per frame
    (PS3.3 §C.8.12.6.1, Plane Position (Slide)), the largest kind of header a WSI level has."""
    ds = Dataset()
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientID = "P-sparse"
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_SPARSE"
    ds.Rows = ds.Columns = 1
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = 1000, max(1, math.ceil(frames / 1000))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    items = []
    for n in range(frames):
        position = Dataset()
        position.ColumnPositionInTotalImagePixelMatrix = n % 1000 + 1
        position.RowPositionInTotalImagePixelMatrix = n // 1000 + 1
        position.XOffsetInSlideCoordinateSystem = f"{n * 0.00025:.5f}"
        position.YOffsetInSlideCoordinateSystem = "1.0"
        item = Dataset()
        item.PlanePositionSlideSequence = [position]
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    ds.PixelData = bytes(3 * frames)
    _write(ds, path, ExplicitVRLittleEndian)
    return SlideFile(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, tuple(ds.ImageType),
                     ExplicitVRLittleEndian, frames, "native", 1)


def make_image(path: Path, *, modality: str, study_uid: str, series_uid: str, patient_id: str, patient_name: str,
               study_date: str = "20260101", study_time: str = "101500", instance_number: int = 1) -> SlideFile:
    """A small single-frame radiology image (CT/MR/...): the non-pathology part of a test corpus."""
    ds = Dataset()
    ds.SOPClassUID = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}.get(
        modality, "1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.PatientBirthDate, ds.PatientSex = "19800101", "M"
    ds.StudyDate = ds.SeriesDate = study_date
    ds.StudyTime = ds.SeriesTime = study_time
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"ACC-{patient_id}"[:16], "S2", "Other^Doctor"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 2, instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (textured_tile((32, 32), instance_number)[:, :, 0].astype(np.uint16) * 16).tobytes()
    _write(ds, path, ExplicitVRLittleEndian)
    return SlideFile(path, study_uid, series_uid, ds.SOPInstanceUID, tuple(ds.ImageType), ExplicitVRLittleEndian,
                     1, "native", 1)


def copy_instance(source: SlideFile, path: Path, *, sop_uid: str | None = None, study_uid: str | None = None,
                  series_uid: str | None = None, variant: int | None = None) -> SlideFile:
    """``source`` again under other UIDs (a new SOP Instance UID unless given), written to ``path``.

    ``variant`` makes the pixel data differ (each frame gets ``variant + 1`` extra bytes, so
    frame lengths and offsets differ too) and names it in ContainerIdentifier.
    """
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(source.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or source.study_uid
    ds.SeriesInstanceUID = series_uid or source.series_uid
    if variant is not None:
        ds.ContainerIdentifier = f"VARIANT-{variant}"
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        ds.PixelData = encapsulate([frame + bytes([variant % 256]) * (variant + 1) for frame in frames])
    ds.save_as(path, enforce_file_format=True)
    return SlideFile(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, source.image_type,
                     source.transfer_syntax, source.number_of_frames, "bot" if variant is not None else
                     source.offset_table, source.fragments_per_frame)


#: The size a pixel bomb's frame claims: decoding it takes 2.5 GB and more (issue 20 measured +2.5 GB RSS).
BOMB_SIDE = 30000


def rle_bomb(segments: int, segment_bytes: int) -> bytes:
    """An RLE frame (PS3.5 Annex G) of ``segments`` segments, each of PackBits runs repeating a byte 128 times:
    decoded without a bound it takes 64 × ``segment_bytes`` bytes per segment, whatever the image's size."""
    offsets = [64 + i * segment_bytes for i in range(segments)]
    header = struct.pack("<16I", segments, *offsets, *[0] * (15 - segments))
    return header + bytes([0x81, 0x7F]) * (segments * segment_bytes // 2)


def bomb_frame(frame: bytes, transfer_syntax: str, side: int = BOMB_SIDE) -> bytes:
    """``frame`` with its codestream header claiming ``side`` × ``side`` pixels: Y and X of the JPEG or
    JPEG-LS frame header (ITU-T T.81 §B.2.2), Xsiz and Ysiz of JPEG 2000's SIZ (ISO/IEC 15444-1 §A.5.1, right
    after SOC). An RLE frame names no size: its bomb is 15 segments (an 8-bit RGB image has 3) of runs that
    decode to 15 × 8 MiB."""
    if transfer_syntax == RLELossless:
        return rle_bomb(15, 128 * 1024)
    out = bytearray(frame)
    if transfer_syntax in (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2K):
        assert out[:4] == b"\xff\x4f\xff\x51", "a raw codestream: SOC, then SIZ"
        struct.pack_into(">II", out, 8, side, side)
        return bytes(out)
    # The first frame header marker: SOF55 for JPEG-LS, SOF0-SOF15 (not DHT C4, JPG C8, DAC CC) for JPEG.
    marker = rb"\xff\xf7" if transfer_syntax in (JPEGLSLossless, JPEGLSNearLossless) else \
        rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]"
    found = re.search(marker, out)
    assert found is not None, "a frame header"
    struct.pack_into(">HH", out, found.start() + 5, side, side)
    return bytes(out)


def make_bomb(directory: Path, transfer_syntax: str, frame: bytes | None = None) -> SlideFile:
    """A one-frame 256×256 slide image in ``transfer_syntax`` whose frame is ``frame``, by default
    :func:`bomb_frame` of the real one."""
    import pydicom
    from pydicom.encaps import generate_frames

    (file,) = make_slide(directory, transfer_syntax=transfer_syntax, levels=1, base_size=(TILE, TILE),
                         associated=False, with_icc_profile=False)
    ds = pydicom.dcmread(file.path)
    real = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame if frame is not None else bomb_frame(real, transfer_syntax)])
    ds.save_as(file.path, enforce_file_format=True)
    return file


def make_annotations(volume: SlideFile, path: Path, *, points: int, polygons: int, seed: int = 0) -> SlideFile:
    """A Microscopy Bulk Simple Annotations instance (PS3.3 §A.87, written by highdicom) over ``volume``'s slide:
    a group of ``points`` nuclei (POINT) and one of ``polygons`` tumour regions (POLYGON, circles of 24 vertices),
    in the slide's 3D frame of reference, in the central quarter of the slide, the nuclei in its first half (of
    the columns) and the tumour regions in its second (so a viewer draws them there, however the slide is
    oriented). Its coordinates (32-bit floats, as highdicom writes them) and polygon indices
    are the bulk data a viewer reads by BulkDataURI."""
    import highdicom
    import pydicom
    from highdicom.ann import AnnotationGroup, MicroscopyBulkSimpleAnnotations
    from pydicom.sr.codedict import codes

    source = pydicom.dcmread(volume.path, stop_before_pixels=True)
    transform = highdicom.spatial.PixelToReferenceTransformer.for_image(source, for_total_pixel_matrix=True)
    width, height = source.TotalPixelMatrixColumns, source.TotalPixelMatrixRows
    top, bottom, middle = height // 4 + 12, 3 * height // 4 - 12, width // 2
    rng = np.random.default_rng(seed)
    # Pixel indices (column, row) inside the matrix, as highdicom's transformer takes them.
    nuclei = rng.integers((width // 4 + 12, top), (middle, bottom), size=(points, 2))
    centres = rng.integers((middle + 12, top), (3 * width // 4 - 12, bottom), size=(polygons, 2))
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.rint(np.stack([np.cos(angles), np.sin(angles)], axis=1) * 10).astype(int)
    regions = [transform(centre + ring).astype(np.float32) for centre in centres]
    category = codes.SCT.MorphologicallyAbnormalStructure
    groups = [
        AnnotationGroup(number=1, uid=generate_uid(), label="nuclei", annotated_property_category=category,
                        annotated_property_type=codes.SCT.Nucleus, graphic_type="POINT",
                        graphic_data=list(transform(nuclei).astype(np.float32)[:, np.newaxis, :]),
                        algorithm_type="MANUAL"),
        AnnotationGroup(number=2, uid=generate_uid(), label="tumour", annotated_property_category=category,
                        annotated_property_type=codes.SCT.Neoplasm, graphic_type="POLYGON",
                        graphic_data=regions, algorithm_type="MANUAL"),
    ]
    annotations = MicroscopyBulkSimpleAnnotations(
        source_images=[source], annotation_coordinate_type="3D", annotation_groups=groups,
        series_instance_uid=generate_uid(), series_number=90, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="dicomweb tests", manufacturer_model_name="wsi_factory", software_versions="1",
        device_serial_number="1")
    annotations.save_as(path, enforce_file_format=True)
    return SlideFile(path, volume.study_uid, annotations.SeriesInstanceUID, annotations.SOPInstanceUID, (),
                     ExplicitVRLittleEndian, 0, "native", 0)
