"""The converter's process (``dicomweb/converter.py``): the parts of an in-process conversion, one process for a run,
a lower priority, and a death that is a failure, not a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pydicom
import pytest

from dicomweb.convert import SlideMetadata, convert_parts
from dicomweb.converter import NICENESS, Converter
from dicomweb.errors import InvalidDataset
from tests.conftest import ROOT
from tests.scanner_files import make_ome_tiff, make_svs


def test_the_converter_s_process_gives_the_parts_of_an_in_process_conversion(tmp_path: Path) -> None:
    """One process serves a run's files; what it writes, the order, the folders announced and the refusals are
    those of :func:`convert_parts`; a file left halfway, or a process that dies, ends it and the next file
    starts another."""
    make_svs(tmp_path / "a.svs")
    make_ome_tiff(tmp_path / "b.ome.tiff")
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + bytes(100))
    metadata = SlideMetadata(patient_id="P-APART")
    here = [[pydicom.dcmread(p).SOPInstanceUID for p in part]
            for part in convert_parts(tmp_path / "a.svs", tmp_path / "here", metadata)]
    with Converter() as converter:
        folders: list[Path] = []
        apart = [[pydicom.dcmread(p).SOPInstanceUID for p in part]
                 for part in converter.parts(tmp_path / "a.svs", tmp_path / "apart", metadata, starting=folders.append)]
        assert apart == here and len(apart) == 4, "the same parts, in the same order, with the same UIDs"
        assert folders == [tmp_path / "apart" / f"level-{i}" for i in range(3)] + [tmp_path / "apart" / "associated"]
        first = converter._process.pid
        with pytest.raises(InvalidDataset, match="bad.svs cannot be converted: "):
            list(converter.parts(tmp_path / "bad.svs", tmp_path / "bad", metadata))
        assert sum(map(len, converter.parts(tmp_path / "b.ome.tiff", tmp_path / "b", metadata))) == 3
        assert converter._process.pid == first, "one process for every file, refused ones included"
        halfway = converter.parts(tmp_path / "a.svs", tmp_path / "halfway", metadata)
        next(halfway)
        halfway.close()
        assert converter._process is None, "a file left halfway ends the process"
        assert sum(map(len, converter.parts(tmp_path / "b.ome.tiff", tmp_path / "b2", metadata))) == 3
        killed = converter.parts(tmp_path / "a.svs", tmp_path / "killed", metadata)
        next(killed)
        converter._process.kill()
        with pytest.raises(RuntimeError, match="process ended with exit code -9"):
            list(killed)
        assert sum(map(len, converter.parts(tmp_path / "a.svs", tmp_path / "after", metadata))) == 6
        assert psutil.Process(converter._process.pid).nice() == os.nice(0) + NICENESS, "it runs second"


def test_the_module_starts_the_process_before_anything_heavy_is_imported() -> None:
    """``dicomweb upload`` starts the converter's process before its own imports: the module must not bring them."""
    heavy = ("pydicom", "wsidicomizer", "wsidicom", "numpy", "aiohttp", "azure")
    code = "import sys, dicomweb.converter; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert not [name for name in heavy if f"'{name}'" in loaded], loaded
