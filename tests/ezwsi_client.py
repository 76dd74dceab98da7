"""Google's EZ-WSI DICOMweb reading a slide from the service, run in an environment of its own.

ez-wsi-dicomweb needs marshmallow < 4 (through dataclasses-json) and wsidicom needs >= 4, so
`.ci/run` installs it into `.venv/ezwsi` and the tests run this script there:

    .venv/ezwsi/bin/python tests/ezwsi_client.py BASE_URL STUDY SERIES OUT.npz

It opens the series as EZ-WSI does for an ML pipeline (QIDO for the instances with the tags it
needs, then frames untranscoded, decoded in the client), reads every pyramid level whole as one
patch and a patch that starts inside a tile, saves them (``level1``, ``level1-inner`` …) in ``OUT.npz`` and
prints as JSON the levels it found (and where the inner patch is), where it found the ICC profile and the
profile's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
from ez_wsi_dicomweb import credential_factory, dicom_slide, dicom_web_interface
from ez_wsi_dicomweb.ml_toolkit import dicom_path


def inner(width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, width, height) of a patch off the tile grid, across tile edges, inside a level of that size."""
    return width // 5 + 3, height // 7 + 5, width // 2, height // 2


def main(base_url: str, study: str, series: str, out: str) -> None:
    interface = dicom_web_interface.DicomWebInterface(credential_factory.NoAuthCredentialsFactory())
    slide = dicom_slide.DicomSlide(interface, dicom_path.FromString(f"{base_url}/studies/{study}/series/{series}"))
    patches, levels = {}, []
    for level in slide.levels:
        name = f"level{level.level_index}"
        patches[name] = slide.get_patch(level, 0, 0, level.width, level.height).image_bytes()
        x, y, width, height = inner(level.width, level.height)
        patches[f"{name}-inner"] = slide.get_patch(level, x, y, width, height).image_bytes()
        levels.append({"index": level.level_index, "width": level.width, "height": level.height,
                       "frames": level.number_of_frames, "transferSyntaxUID": level.transfer_syntax_uid,
                       "inner": [x, y, width, height]})
    np.savez(out, **patches)
    icc_uri = next((uri for level in slide.levels if (uri := level.icc_profile_bulkdata_uri())), "")
    print(json.dumps({"levels": levels, "iccUri": icc_uri,
                      "icc": hashlib.sha256(slide.get_icc_profile_bytes()).hexdigest()}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
