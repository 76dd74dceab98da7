"""Which instance stands for a study or series in its thumbnail."""

from __future__ import annotations

import pytest

from dicomweb import thumbnails
from dicomweb.errors import NotFound


def _doc(sop: str, flavour: str | None, size: tuple[int, int] | None = None, number: int = 1) -> dict:
    return {"sopInstanceUID": sop, "seriesInstanceUID": "1.2", "imageType": flavour, "numberOfFrames": 4,
            "totalPixelMatrix": list(size) if size else None, "instanceNumber": number}


def test_the_thumbnail_then_the_overview_then_the_smallest_level_never_the_label() -> None:
    levels = [_doc("1", "VOLUME", (4000, 3000)), _doc("2", "VOLUME", (1000, 750)), _doc("3", "LABEL", (200, 100))]
    assert thumbnails.pick(levels)["sopInstanceUID"] == "2"
    assert thumbnails.pick([*levels, _doc("4", "OVERVIEW", (300, 200))])["sopInstanceUID"] == "4"
    assert thumbnails.pick([*levels, _doc("4", "OVERVIEW"), _doc("5", "THUMBNAIL")])["sopInstanceUID"] == "5"
    with pytest.raises(NotFound):
        thumbnails.pick([_doc("3", "LABEL")])


def test_other_series_show_their_middle_instance() -> None:
    slices = [_doc(str(n), "AXIAL", number=n) for n in (3, 1, 2)]
    assert thumbnails.pick(slices)["instanceNumber"] == 2
