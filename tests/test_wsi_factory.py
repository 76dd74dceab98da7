"""The WSI generator's output checked by independent readers: pydicom, Pillow, imagecodecs and wsidicom.

Integration tests and the benchmark trust these files as real scanner output, so
every layout must parse the way the standard says and open in a WSI viewer library.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_fragmented_frames, generate_frames, parse_basic_offsets
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
from wsidicom import WsiDicom

from tests.wsi_factory import SlideFile, make_large_instance, make_slide, textured_tile

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
LAYOUTS = [
    (JPEGBaseline8Bit, "bot", 1),
    (JPEGBaseline8Bit, "eot", 1),
    (JPEGBaseline8Bit, "empty", 1),
    (JPEGBaseline8Bit, "bot", 3),
    (JPEG2000Lossless, "bot", 1),
    (JPEG2000, "empty", 1),
    (ExplicitVRLittleEndian, "bot", 1),
]


def _fragmented_frames(dataset: pydicom.Dataset) -> list[tuple[bytes, ...]]:
    """Each frame's fragments, located through whichever offset table the file has."""
    extended = None
    if "ExtendedOffsetTable" in dataset:
        extended = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    return list(generate_fragmented_frames(dataset.PixelData, number_of_frames=dataset.NumberOfFrames,
                                           extended_offsets=extended))


def _native_frames(dataset: pydicom.Dataset) -> list[bytes]:
    size = dataset.Rows * dataset.Columns * dataset.SamplesPerPixel
    assert len(dataset.PixelData) == size * dataset.NumberOfFrames
    return [dataset.PixelData[i * size : (i + 1) * size] for i in range(dataset.NumberOfFrames)]


def _decoded_size(frame: bytes, transfer_syntax: str) -> tuple[int, int]:
    """(columns, rows) of a compressed frame, decoded by a codec independent of the generator."""
    if transfer_syntax == JPEGBaseline8Bit:
        image = Image.open(io.BytesIO(frame))
        image.load()
        return image.size
    rows, columns = imagecodecs.jpeg2k_decode(frame).shape[:2]
    return columns, rows


def test_textured_tile_is_deterministic_and_textured() -> None:
    tile = textured_tile((300, 200), seed=5)
    assert tile.shape == (200, 300, 3) and tile.dtype == np.uint8
    assert np.array_equal(tile, textured_tile((300, 200), seed=5))
    assert not np.array_equal(tile, textured_tile((300, 200), seed=6))
    assert tile.std() > 20


@pytest.mark.parametrize("syntax,table,fragments", LAYOUTS)
def test_every_layout_reads_back(tmp_path: Path, syntax: str, table: str, fragments: int) -> None:
    files = make_slide(tmp_path, transfer_syntax=syntax, offset_table=table, fragments_per_frame=fragments)
    expected_table = "native" if syntax == ExplicitVRLittleEndian else table
    assert [f.image_type[2] for f in files] == ["VOLUME"] * 3 + ["LABEL", "OVERVIEW", "THUMBNAIL"]
    assert {f.offset_table for f in files} == {expected_table}
    for file in files:
        assert file.path.read_bytes()[128:132] == b"DICM", "Part 10 preamble and prefix"
        dataset = pydicom.dcmread(file.path)
        assert dataset.file_meta.TransferSyntaxUID == syntax == file.transfer_syntax
        assert dataset.NumberOfFrames == file.number_of_frames
        assert ("ExtendedOffsetTable" in dataset) == (table == "eot")
        if expected_table == "native":
            frames = _native_frames(dataset)
        else:
            has_bot = parse_basic_offsets(io.BytesIO(dataset.PixelData)) != []
            assert has_bot == (table == "bot")
            fragmented = _fragmented_frames(dataset)
            assert {len(f) for f in fragmented} == {fragments}
            assert all(len(fragment) % 2 == 0 for frame in fragmented for fragment in frame)
            frames = list(generate_frames(dataset.PixelData, number_of_frames=dataset.NumberOfFrames))
            assert frames == [b"".join(f) for f in fragmented]
            assert _decoded_size(frames[-1], syntax) == (dataset.Columns, dataset.Rows)
        assert len(frames) == dataset.NumberOfFrames
        assert len(set(frames)) == len(frames), "textured frames differ"


def test_slide_attributes_describe_one_pyramid(tmp_path: Path) -> None:
    files = make_slide(tmp_path, study_uid="1.2.3.4", patient_id="P-9", patient_name="Roe^Richard")
    datasets = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in files]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "ContainerIdentifier"):
        assert len({ds[key].value for ds in datasets}) == 1, key
    assert datasets[0].StudyInstanceUID == "1.2.3.4" and str(datasets[0].PatientName) == "Roe^Richard"
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(files) + 1))
    base_spacing = float(datasets[0].SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    for level, ds in enumerate(datasets[:3]):
        assert ds.SOPClassUID == WSI_SOP_CLASS and ds.Modality == "SM"
        assert ds.DimensionOrganizationType == "TILED_FULL"
        assert ds.PhotometricInterpretation == "YBR_FULL_422"
        assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (math.ceil(1024 / 2**level),
                                                                          math.ceil(768 / 2**level))
        grid = math.ceil(ds.TotalPixelMatrixColumns / ds.Columns) * math.ceil(ds.TotalPixelMatrixRows / ds.Rows)
        assert ds.NumberOfFrames == grid
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(s) for s in spacing] == pytest.approx([base_spacing * 2**level] * 2)
        assert float(ds.ImagedVolumeWidth) == pytest.approx(ds.TotalPixelMatrixColumns * float(spacing[1]))
        assert ds.OpticalPathSequence[0].ICCProfile.startswith(b"\x00\x00")
        assert ds.SpecimenDescriptionSequence[0].SpecimenUID
    assert tuple(datasets[0].ImageType) == ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
    assert tuple(datasets[1].ImageType) == ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")
    assert tuple(datasets[5].ImageType) == ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED")
    assert all(ds.NumberOfFrames == 1 for ds in datasets[3:])
    assert datasets[3].BurnedInAnnotation == "YES"


def test_icc_profile_and_associated_images_are_optional(tmp_path: Path) -> None:
    files = make_slide(tmp_path, levels=2, associated=False, with_icc_profile=False)
    assert [f.image_type[2] for f in files] == ["VOLUME", "VOLUME"]
    assert all("ICCProfile" not in pydicom.dcmread(f.path).OpticalPathSequence[0] for f in files)


@pytest.mark.parametrize("syntax,table,fragments", [
    (ExplicitVRLittleEndian, "eot", 1), (JPEGBaseline8Bit, "native", 1), (JPEGBaseline8Bit, "eot", 2),
])
def test_impossible_layouts_are_refused(tmp_path: Path, syntax: str, table: str, fragments: int) -> None:
    with pytest.raises(ValueError):
        make_slide(tmp_path, transfer_syntax=syntax, offset_table=table, fragments_per_frame=fragments)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, ExplicitVRLittleEndian])
def test_wsidicom_reads_every_level(tmp_path: Path, syntax: str) -> None:
    make_slide(tmp_path, transfer_syntax=syntax)
    with WsiDicom.open(tmp_path) as slide:
        assert len(slide.levels) == 3
        assert slide.labels and slide.overviews and slide.pyramid.thumbnails
        assert slide.metadata.slide.identifier == "SLIDE-P-1"
        assert slide.metadata.pyramid.optical_paths[0].icc_profile
        for level in range(3):
            size = slide.levels[level].size
            region = np.asarray(slide.read_region((0, 0), level, (min(200, size.width), min(200, size.height))))
            assert region.std() > 20, "pixels are textured"
        assert np.asarray(slide.read_label()).std() > 20


def _sizes(slide: SlideFile) -> tuple[int, int]:
    dataset = pydicom.dcmread(slide.path, stop_before_pixels=True)
    return dataset.TotalPixelMatrixColumns // dataset.Columns, dataset.TotalPixelMatrixRows // dataset.Rows


def test_large_instance_streams_valid_frames(tmp_path: Path) -> None:
    large = make_large_instance(tmp_path / "large.dcm", frames=300, frame_bytes=20000)
    size = large.path.stat().st_size
    assert 300 * 20008 < size < 300 * 20012 + 10_000, "frames dominate the file"
    assert large.number_of_frames == 300 and large.offset_table == "bot"
    columns, rows = _sizes(large)
    assert columns * rows == 300, "TILED_FULL: one frame per tile"
    dataset = pydicom.dcmread(large.path)
    assert dataset.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert parse_basic_offsets(io.BytesIO(dataset.PixelData)) == [i * 20008 for i in range(300)]
    frames = list(generate_frames(dataset.PixelData, number_of_frames=dataset.NumberOfFrames))
    assert len(frames) == dataset.NumberOfFrames == 300
    assert {len(f) for f in frames} == {20000}
    assert len(set(frames)) == 300, "frame numbers in the comment segments make frames distinct"
    for number in (1, 2, 150, 300):
        image = Image.open(io.BytesIO(frames[number - 1]))
        image.load()
        assert image.size == (256, 256)
        assert f"frame {number} ".encode() in frames[number - 1][:64]
