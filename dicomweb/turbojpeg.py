"""libjpeg-turbo's TurboJPEG library for opentile where the system has none (the Function App).

opentile, wsidicomizer's reader of SVS, NDPI, Philips TIFF and OME-TIFF, copies and crops JPEG
tiles through PyTurboJPEG, a ctypes binding of the native TurboJPEG library, which it looks for
with ``ctypes.util.find_library``, then in PyTurboJPEG's default paths, and last in the file or
folder that the ``TURBOJPEG`` environment variable names. Debian's ``libturbojpeg0`` gives it on
a developer's machine and in CI (``.ci/run``), but the Function App's Flex Consumption image has
none, and its remote build installs ``requirements.txt`` only: no system package. No PyPI wheel
carries libturbojpeg on its own; pylibjxl's does, inside its extension module, which links
libjpeg-turbo 3.1 statically and exports its whole TurboJPEG API (the ``tj*`` functions that
PyTurboJPEG 1.x and opentile's JPEG filler call, and ``tj3*``). :func:`locate` names that module
in ``TURBOJPEG``; since opentile looks there last, a system library still wins where there is one.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

#: The variable opentile reads when it finds no system library.
VARIABLE = "TURBOJPEG"
#: The wheel that carries the library (requirements.txt), and its extension module's file names.
WHEEL_PACKAGE = "pylibjxl"
LIBRARY_GLOB = "_pylibjxl*.so"


def locate() -> Path | None:
    """Name the wheel's TurboJPEG library in ``TURBOJPEG`` unless the variable is set already; what it names
    (None without the wheel). Call it before opentile makes a tiler (it reads the variable then); cheap, so once per
    conversion is fine."""
    if os.environ.get(VARIABLE):
        return Path(os.environ[VARIABLE])
    spec = importlib.util.find_spec(WHEEL_PACKAGE)  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for library in sorted(Path(folder).glob(LIBRARY_GLOB)):
            os.environ[VARIABLE] = str(library)
            return library
    return None
