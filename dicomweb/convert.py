"""Scanner files (Aperio SVS, Hamamatsu NDPI, Philips TIFF, 3DHistech TIFF, OME-TIFF, …) made DICOM whole-slide
images with wsidicomizer (PS3.3 A.32.8: one instance per pyramid level, and the label, overview and thumbnail).

wsidicomizer reads the file through opentile where it knows the format, copying each JPEG
(or JPEG 2000) tile into a frame without decoding it, so the pixels are the scanner's own;
through tiffslide otherwise (re-encoded). Metadata the scanner file lacks comes from
:class:`SlideMetadata` (options, or a JSON or CSV file keyed by file name). UIDs are derived
from the file (name, size and the bytes of its first and last MiB) and that metadata, so
converting the same file with the same metadata again gives the same UIDs, and storing it
again answers "already stored" instead of making a second copy of the slide.

Conversion reads and writes files on disk, level by level: never the whole file, nor a
whole level, in memory (wsidicomizer writes frames as it reads tiles).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
from pydicom import Dataset
from pydicom.uid import UID, generate_uid
from tqdm import tqdm

from dicomweb.dicom.syntax import is_valid_uid
from dicomweb.errors import BadRequest, InvalidDataset

#: What identifies a file for its UIDs: the bytes read from each end.
FINGERPRINT_BYTES = 1024 * 1024
#: JPEG quality of tiles that cannot be copied (formats read through tiffslide or OpenSlide): wsidicom's default of
#: 80 visibly smooths nuclei; 90 keeps them at about 1.5 times the bytes.
REENCODE_QUALITY = 90
#: Tiles read from the source per batch. wsidicom's default for a tile-copying source is a batch of one, and the
#: per-batch overhead then makes up half a conversion: 32 takes a 1 GB SVS from 3.5 s to 1.8 s, at 270 MB peak RSS
#: (in-flight batches grow with it: 64 saves 0.3 s more for 120 MB more).
CHUNK_TILES = 32
#: File name suffixes of the scanner formats the converter opens (a DICOM file is stored as it is).
SCANNER_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".mrxs", ".scn", ".bif", ".vms",
                    ".czi", ".isyntax")


@dataclass(frozen=True)
class SlideMetadata:
    """What a converted slide's instances get that the scanner file does not say (PS3.3 C.7.1.1, C.7.2.1,
    C.7.6.1 and the Specimen module C.7.6.22)."""

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    #: Join an existing study instead of starting one.
    study_uid: str | None = None
    container_identifier: str | None = None
    specimen_description: str | None = None

    def merged(self, other: "SlideMetadata") -> "SlideMetadata":
        """This metadata with ``other``'s values where ``other`` has one."""
        return SlideMetadata(**{k: v if v is not None else getattr(self, k) for k, v in asdict(other).items()})

    def dataset(self) -> Dataset:
        """The attributes to set on every instance of the slide."""
        ds = Dataset()
        if self.patient_id is not None:
            ds.PatientID = self.patient_id
        if self.patient_name is not None:
            ds.PatientName = self.patient_name
        if self.accession_number is not None:
            ds.AccessionNumber = self.accession_number
        if self.container_identifier is not None:
            ds.ContainerIdentifier = self.container_identifier
        if self.specimen_description is not None:
            item = Dataset()  # PS3.3 C.7.6.22: short description up to 64 characters, detailed beyond
            if len(self.specimen_description) <= 64:
                item.SpecimenShortDescription = self.specimen_description
            else:
                item.SpecimenDetailedDescription = self.specimen_description
            item.SpecimenIdentifier = self.container_identifier or "1"
            item.IssuerOfTheSpecimenIdentifierSequence = []
            item.SpecimenPreparationSequence = []
            item.SpecimenUID = generate_uid(entropy_srcs=["specimen", self.container_identifier or "",
                                                          self.specimen_description])
            ds.SpecimenDescriptionSequence = [item]
        return ds


#: Column or key names of a metadata file, by field.
KEYS = {"patient_id": "PatientID", "patient_name": "PatientName", "accession_number": "AccessionNumber",
        "study_uid": "StudyInstanceUID", "container_identifier": "ContainerIdentifier",
        "specimen_description": "SpecimenDescription"}


def _checked(values: dict[str, str], where: str) -> SlideMetadata:
    unknown = set(values) - set(KEYS.values()) - {"file"}
    if unknown:
        raise BadRequest(f"{where}: unknown metadata {', '.join(sorted(unknown))}; known: {', '.join(KEYS.values())}")
    found = SlideMetadata(**{name: (values.get(key) or None) for name, key in KEYS.items()})
    if found.study_uid is not None and not is_valid_uid(found.study_uid):
        raise BadRequest(f"{where}: StudyInstanceUID {found.study_uid!r} is not a valid UID")
    return found


def load_metadata(path: Path) -> dict[str, SlideMetadata]:
    """Metadata per file name from a JSON object (``{"slide.svs": {"PatientID": …}}``) or a CSV file with a
    ``file`` column and the others named as DICOM keywords (PatientID, PatientName, AccessionNumber,
    StudyInstanceUID, ContainerIdentifier, SpecimenDescription)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise BadRequest(f"{path.name} is not JSON: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise BadRequest(f"{path.name}: a JSON object of file name → {{keyword: value}}")
        return {name: _checked({k: str(v) for k, v in values.items()}, f"{path.name}: {name}")
                for name, values in raw.items()}
    rows = list(csv.DictReader(text.splitlines()))
    if rows and "file" not in rows[0]:
        raise BadRequest(f"{path.name}: the CSV needs a 'file' column")
    return {row["file"]: _checked({k: v for k, v in row.items() if k}, f"{path.name}: {row['file']}") for row in rows}


def fingerprint(source: Path, metadata: SlideMetadata, name: str | None = None) -> str:
    """What a slide's UIDs are derived from: the file's name (``name``, else its own), size, first and last MiB,
    and the metadata."""
    digest = hashlib.sha256()
    size = source.stat().st_size
    digest.update(f"{name or source.name}\0{size}\0".encode())
    with source.open("rb") as file:
        digest.update(file.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            file.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(file.read(FINGERPRINT_BYTES))
    digest.update(json.dumps(asdict(metadata), sort_keys=True).encode())
    return digest.hexdigest()


def stable_uids(seed: str) -> Callable[[], UID]:
    """UIDs that are the same for the same ``seed``, in the order they are asked for (a conversion asks in a
    fixed order)."""
    counter = itertools.count()
    return lambda: generate_uid(entropy_srcs=[seed, str(next(counter))])


def is_scanner_file(path: Path) -> bool:
    """Whether ``path`` names a format the converter may open (by its suffix; opening tells for sure)."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SCANNER_SUFFIXES)


#: TIFF compression of JPEG tiles (TIFF Technical Note 2), whose ends are checked before a conversion.
TIFF_JPEG = 7
#: An EOI marker may be followed by a little padding.
JPEG_TAIL = 16


def check_source(source: Path, label: str) -> None:
    """Refuse (:class:`InvalidDataset`, saying why, the file named ``label``) a TIFF-based scanner file that is cut
    short or has a damaged JPEG tile, before anything converted from it is stored.

    The readers take a TIFF whose chain of images is cut for a slide with fewer images, and
    copy a tile without looking into it: a truncated SVS would otherwise become a slide
    missing its lower levels, label and macro image. Every image of the chain (and its
    sub-images: OME-TIFF keeps the pyramid there) must be reachable, every tile must lie
    inside the file and every JPEG tile must run from SOI to EOI. A file that is not a TIFF
    is left to its reader.
    """
    import tifffile

    size = source.stat().st_size
    try:
        with tifffile.TiffFile(source) as tif, source.open("rb") as handle:
            pages = list(tif.pages)
            if pages and _next_image(tif, handle.fileno(), pages[-1].offset) != 0:
                raise InvalidDataset(f"the file is cut short (its chain of images breaks off after image "
                                     f"{len(pages) - 1})")
            for page in list(pages):
                for offset in getattr(page, "subifds", None) or ():
                    tif.filehandle.seek(offset)
                    pages.append(tifffile.TiffPage(tif, index=(page.index, len(pages))))
            for number, page in enumerate(pages):
                _check_tiles(handle.fileno(), size, number, page)
    except tifffile.TiffFileError:
        return
    except InvalidDataset as refused:
        raise InvalidDataset(f"{label} cannot be converted: {refused.message}") from None


def _next_image(tif: Any, fileno: int, offset: int) -> int:
    """The offset of the image after the one whose directory is at ``offset`` (0: it is the last)."""
    header = tif.tiff
    (entries,) = struct.unpack(header.tagnoformat, os.pread(fileno, header.tagnosize, offset))
    where = offset + header.tagnosize + entries * header.tagsize
    raw = os.pread(fileno, header.offsetsize, where)
    return struct.unpack(header.offsetformat, raw)[0] if len(raw) == header.offsetsize else -1


def _check_tiles(fileno: int, size: int, number: int, page: Any) -> None:
    """Every tile of image ``number`` inside the file, every JPEG tile from SOI to EOI."""
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if count == 0:  # a sparse tile (Philips): the reader fills it in
            continue
        if offset + count > size:
            raise InvalidDataset(f"the file is cut short (image {number} needs {offset + count} bytes, the file has "
                                 f"{size})")
        if page.compression == TIFF_JPEG and (os.pread(fileno, 2, offset) != b"\xff\xd8"
                                              or b"\xff\xd9" not in os.pread(fileno, min(count, JPEG_TAIL),
                                                                            offset + count - min(count, JPEG_TAIL))):
            raise InvalidDataset(f"the file is damaged (a JPEG tile of image {number} at byte {offset} does not run "
                                 "from SOI to EOI)")


class Progress:
    """A conversion's progress bar (stderr; off when stderr is not a terminal unless asked): bytes of DICOM
    written (so MB/s), the level being written and the tiles of the levels done.

    Bytes are sampled from the files in the work folder every quarter second, from a thread of
    its own, since wsidicom reports nothing while it writes a level.
    """

    def __init__(self, name: str, estimate: int, enabled: bool | None = None, position: int | None = None) -> None:
        self._bar = tqdm(total=estimate, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                         desc=f"convert {name}", dynamic_ncols=True, position=position, leave=True,
                         disable=None if enabled is None else not enabled)
        self._work: Path | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._tiles_done = 0

    def start(self, work: Path, tiles: list[int]) -> None:
        """The conversion writes into ``work``: ``tiles`` of each pyramid level, base first."""
        self._work, self._tiles, self._tiles_total = work, tiles, sum(tiles)
        self.level(0)
        if not self._bar.disable:
            self._sampler = threading.Thread(target=self._sample, name="convert-progress", daemon=True)
            self._sampler.start()

    def level(self, index: int) -> None:
        """Level ``index`` (0: the base, written first) is being written (``len(tiles)``: the label, overview and
        thumbnail, written last)."""
        count = len(self._tiles)
        self._tiles_done = sum(self._tiles[:index])
        what = f"level {index + 1}/{count}" if index < count else "label, overview, thumbnail"
        self._bar.set_postfix_str(f"{what}, {self._tiles_done:,}/{self._tiles_total:,} tiles")

    def _written(self) -> int:
        total = 0
        for path in self._work.rglob("*") if self._work is not None else ():
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:  # moved or removed meanwhile
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self._update(self._written())

    def _update(self, written: int) -> None:
        self._bar.total = max(self._bar.total, written)
        if written > self._bar.n:
            self._bar.update(written - self._bar.n)

    def close(self, written: int | None = None) -> None:
        """Stop sampling; ``written`` bytes in all when the conversion succeeded (the bar then ends full)."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if written is not None:
            self._bar.total = written
            self._update(written)
            self._tiles_done = self._tiles_total
            self._bar.set_postfix_str(f"{len(self._tiles)} levels, {self._tiles_total:,} tiles", refresh=False)
        self._bar.close()


def convert_parts(source: Path, work: Path, metadata: SlideMetadata = SlideMetadata(), workers: int = 1,
                  progress: Progress | None = None, name: str | None = None,
                  starting: Callable[[Path], None] | None = None, check: bool = True) -> Iterator[list[Path]]:
    """Write the DICOM instances of scanner file ``source`` into ``work``, one part at a time: each pyramid level,
    base first, then the label, overview and thumbnail; yields each part's files as soon as they are written, so
    that they travel while the next part is written (:mod:`dicomweb.uploader`). The base level, most of the
    bytes, goes first: its upload is the longest, and the others are written while it travels.

    The parts are written in a fixed order and each asks for its instance UIDs in turn, so the
    same file and metadata always give the same UIDs. A file that cannot be converted raises
    :class:`InvalidDataset` naming why, possibly after some parts were yielded: a caller must
    not publish any part before the last one is written. ``name`` is the file's name where ``source`` is a copy
    under another (the inbox's, which keeps blob names, possibly naming a patient, out of the libraries' logs).
    ``starting`` is called with each part's folder before the part is written into it (a caller may follow
    the file as it grows). Without ``check``, the caller runs :func:`check_source` itself, meanwhile, and
    publishes nothing before it passed.
    """
    from wsidicom.codec import JpegSettings
    from wsidicomizer import WsiDicomizer  # heavy: only conversion needs it

    from dicomweb import turbojpeg

    turbojpeg.locate()  # before opentile opens the file: the Function App's image has no system libturbojpeg
    label = name or source.name
    if check:
        check_source(source, label)
    seed = fingerprint(source, metadata, label)
    uids = stable_uids(seed)
    post = metadata.dataset()
    post.StudyInstanceUID = metadata.study_uid or generate_uid(entropy_srcs=[seed, "study"])
    try:
        with WsiDicomizer.open(source, metadata_post_processor=post, uid_generator=uids,
                               encoding=JpegSettings(quality=REENCODE_QUALITY)) as wsi:
            levels = list(wsi.levels)
            if progress is not None:
                progress.start(work, [level.tiled_size.width * level.tiled_size.height for level in levels])
            common = {"uid_generator": uids, "workers": workers, "chunk_size": CHUNK_TILES}
            parts = [(work / f"level-{index}", {"include_levels": [index], "include_labels": False,
                                                "include_overviews": False, "include_thumbnails": False})
                     for index in range(len(levels))] + [(work / "associated", {"include_levels": []})]
            for index, (folder, include) in enumerate(parts):
                if progress is not None:
                    progress.level(index)
                if starting is not None:
                    starting(folder)
                yield [Path(str(p)) for p in wsi.save(folder, **include, **common)]
    except Exception as exc:  # noqa: BLE001 - a library refusing a file: every reason is the file's
        raise InvalidDataset(f"{label} cannot be converted: {failure_reason(exc)}") from exc


def convert(source: Path, out: Path, metadata: SlideMetadata = SlideMetadata(), workers: int = 1,
            progress: bool | None = False) -> list[Path]:
    """Write the DICOM instances of scanner file ``source`` into ``out`` (made if missing); their paths.

    The instances are written into a folder of their own inside ``out`` and moved out once all
    are written, so an unreadable, truncated or unsupported file (:class:`InvalidDataset`, naming
    why) leaves nothing behind.
    """
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=out))
    bar = Progress(source.name, source.stat().st_size, progress)
    try:
        written = [path for part in convert_parts(source, work, metadata, workers, bar) for path in part]
        bar.close(sum(path.stat().st_size for path in written))
        return [path.replace(out / path.name) for path in written]
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def failure_reason(exc: Exception) -> str:
    """The first line of what a library raised, with its class, as a refusal's reason."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}"[:300] if text else exc.__class__.__name__


def sources(paths: list[Path]) -> list[Path]:
    """The files to convert: each file named (whatever its name: one named explicitly that cannot be converted is a
    failure, not a skip), and the scanner files in each folder named, recursively."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_scanner_file(p))
        else:
            found.append(path)
    return found


def main(paths: list[Path], out: Path, options: SlideMetadata, metadata_file: Path | None, as_json: bool) -> int:
    """``dicomweb convert``: convert each source into ``out/<file name>/``; a table (or one JSON object per file)
    of what became of each; 1 when any failed."""
    try:
        if options.study_uid is not None and not is_valid_uid(options.study_uid):
            raise BadRequest(f"--study-uid {options.study_uid!r} is not a valid UID")
        per_file = load_metadata(metadata_file) if metadata_file is not None else {}
    except (OSError, BadRequest) as exc:
        print(f"dicomweb convert: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    failed = 0
    rows: list[dict[str, object]] = []
    for source in sources(paths):
        metadata = per_file.get(source.name, SlideMetadata()).merged(options)
        started = time.monotonic()
        try:
            if not source.is_file():
                raise InvalidDataset(f"{source} is not a file")
            written = convert(source, out / source.name, metadata, progress=None if not as_json else False)
            study = pydicom.dcmread(written[0], stop_before_pixels=True).StudyInstanceUID if written else ""
            row: dict[str, object] = {"file": str(source), "status": "converted", "instances": len(written),
                                      "study": study, "seconds": round(time.monotonic() - started, 1)}
        except InvalidDataset as exc:
            failed += 1
            row = {"file": str(source), "status": "failed", "reason": exc.message}
        rows.append(row)
        print(json.dumps(row) if as_json else _line(row), flush=True)
    if not rows:
        print("dicomweb convert: no scanner file found", file=sys.stderr)
        return 1
    if not as_json:
        print(f"{len(rows) - failed} converted, {failed} failed")
    return 1 if failed else 0


def _line(row: dict[str, object]) -> str:
    if row["status"] == "converted":
        return f"{row['file']}: {row['instances']} instances, study {row['study']} ({row['seconds']} s)"
    return f"{row['file']}: FAILED {row['reason']}"
