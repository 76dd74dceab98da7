"""Rendering logic without a server: parameters, geometry of tiled images, plans and display windows."""

from __future__ import annotations

import numpy as np
import pytest

from dicomweb.dicom import render
from dicomweb.dicom.codecs import PixelFormat
from dicomweb.dicom.render import Viewport, Window
from dicomweb.errors import BadRequest


def _dataset(**values: object) -> dict:
    tags = {"rows": "00280010", "columns": "00280011", "total_columns": "00480006", "total_rows": "00480007",
            "organisation": "00209311"}
    return {tags[name]: {"Value": [value]} for name, value in values.items()}


def test_parameters() -> None:
    params = render.parse_params({"viewport": "200,100,10,20,-30,40", "quality": "70", "iccprofile": "SRGB",
                                  "window": "40,400,sigmoid"}, render.PNG)
    assert params == render.RenderParams(render.PNG, 70, Viewport(200, 100, (10, 20, -30, 40)), "srgb",
                                         Window(40.0, 400.0, "sigmoid"))
    assert render.parse_params({}, render.JPEG) == render.RenderParams()
    for bad in ({"viewport": "1,2,3"}, {"viewport": "a,b"}, {"window": "nan,3"}, {"quality": "0"}, {"x": "1"}):
        with pytest.raises(BadRequest):
            render.parse_params(bad, render.JPEG)


def test_tiled_full_and_sparse_geometry() -> None:
    full = render.geometry(_dataset(rows=256, columns=256, total_columns=600, total_rows=300,
                                    organisation="TILED_FULL"), 6)
    assert full.grid.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert full.frames_in(250, 0, 10, 260) == [(1, 0, 0), (2, 1, 0), (4, 0, 1), (5, 1, 1)]
    sparse = _dataset(rows=256, columns=256, total_columns=512, total_rows=512, organisation="TILED_SPARSE")
    sparse["52009230"] = {"Value": [
        {"0040071A": {"Value": [{"0048021E": {"Value": [257]}, "0048021F": {"Value": [257]}}]}},
        {"0040071A": {"Value": [{"0048021E": {"Value": [1]}, "0048021F": {"Value": [1]}}]}}]}
    assert render.geometry(sparse, 2).grid.tolist() == [[2, 0], [0, 1]], "missing tiles stay empty"
    single = render.geometry(_dataset(rows=32, columns=48), 1)
    assert (single.width, single.height, single.grid.tolist()) == (48, 32, [[1]])


def test_plans_fit_keep_aspect_and_refuse_what_is_too_big() -> None:
    geo = render.geometry(_dataset(rows=256, columns=256, total_columns=1000, total_rows=500,
                                   organisation="TILED_FULL"), 8)
    plan = render.plan(geo, Viewport(100, 100), 10**6, 8)
    assert plan.size == (100, 50) and len(plan.tiles) == 8
    region = render.plan(geo, Viewport(50, 50, (900, 0, 300, 100)), 10**6, 8)
    assert region.region == (900, 0, 100, 100) and region.tiles == [(4, 3, 0)], "clipped to the image"
    with pytest.raises(BadRequest, match="DICOMWEB_MAX_RENDERED_PIXELS"):
        render.plan(geo, None, 1000 * 499, 8)
    with pytest.raises(BadRequest, match="DICOMWEB_MAX_RENDERED_FRAMES"):
        render.plan(geo, None, 10**6, 7)


def test_display_windows_monochrome_and_inverts_monochrome1() -> None:
    fmt = PixelFormat(1, 3, 1, 16, 12, False, "MONOCHROME2", 0)
    values = np.array([[0, 2048, 4095]], np.uint16)
    assert render.display(values, fmt, {}, None).tolist() == [[0, 128, 255]]
    assert render.display(values, fmt, {}, Window(2048, 2, "linear-exact")).tolist() == [[0, 128, 255]]
    inverted = PixelFormat(1, 3, 1, 16, 12, False, "MONOCHROME1", 0)
    assert render.display(values, inverted, {}, None).tolist() == [[255, 127, 0]]
    stored_window = {"00281050": {"Value": [100]}, "00281051": {"Value": [200]}, "00281052": {"Value": [-1000]}}
    assert render.display(np.array([[1000, 1100, 1300]], np.uint16), fmt, stored_window, None).tolist()[0][0] == 0
