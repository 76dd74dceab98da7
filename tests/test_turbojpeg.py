"""The TurboJPEG library for opentile where the system has none (``dicomweb/turbojpeg.py``): the wheel's library
named in ``TURBOJPEG``, with the API opentile calls; a ``TURBOJPEG`` already set, or a system library, still wins.
The deployed app converting an SVS with it: ``tests/test_function_app.py``."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
from opentile.jpeg import jpeg as opentile_jpeg
from opentile.jpeg.jpeg import find_turbojpeg_path
from opentile.jpeg.jpeg_filler import JpegFiller
from turbojpeg import TJSAMP_444, TurboJPEG

from dicomweb import turbojpeg

#: What PyTurboJPEG 1.x and opentile's JPEG filler call (TurboJPEG 2 API), and TurboJPEG 3's entry point.
CALLED = ("tjInitCompress", "tjInitDecompress", "tjInitTransform", "tjDecompressHeader3", "tjDecompress2",
          "tjCompress2", "tjTransform", "tjDestroy", "tjFree", "tjGetErrorStr", "tjGetErrorStr2",
          "tjGetScalingFactors", "tjDecompressToYUV2", "tj3Init")


def test_the_wheels_library_is_named_and_serves_pyturbojpeg_and_opentile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURBOJPEG", raising=False)
    library = turbojpeg.locate()
    assert library is not None and library.parent.name == "pylibjxl" and library.is_file()
    assert os.environ["TURBOJPEG"] == str(library)
    native = ctypes.CDLL(str(library))
    assert [name for name in CALLED if not hasattr(native, name)] == []
    codec = TurboJPEG(str(library))
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    encoded = codec.encode(image, quality=100, jpeg_subsample=TJSAMP_444)
    assert np.abs(codec.decode(encoded).astype(int) - image).mean() < 3
    JpegFiller(str(library))  # binds tjInitTransform, tjTransform, … or raises


def test_a_turbojpeg_already_set_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TURBOJPEG", str(tmp_path))
    assert turbojpeg.locate() == tmp_path
    assert os.environ["TURBOJPEG"] == str(tmp_path)


def test_without_the_wheel_nothing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURBOJPEG", raising=False)
    monkeypatch.setattr(turbojpeg, "WHEEL_PACKAGE", "no_such_wheel_package")
    assert turbojpeg.locate() is None
    assert "TURBOJPEG" not in os.environ


def test_a_system_library_still_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where the system has the library (a developer's Debian with libturbojpeg0), opentile keeps finding it
    first: ``locate`` only names the wheel's as the last resort."""
    system = tmp_path / "libturbojpeg.so.0"
    monkeypatch.setattr(opentile_jpeg, "find_library", lambda name: str(system) if "turbojpeg" in name else None)
    monkeypatch.delenv("TURBOJPEG", raising=False)
    assert turbojpeg.locate() is not None and "pylibjxl" in os.environ["TURBOJPEG"]
    assert find_turbojpeg_path() == system
