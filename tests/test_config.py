"""Settings parity: the names the code reads are the names local settings and Bicep provide."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dicomweb.api.http import ROUTE_PREFIX
from dicomweb.config import SETTING_NAMES, Settings

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bDICOMWEB_[A-Z_]+\b")


def _example() -> dict[str, str]:
    return json.loads((ROOT / "local.settings.json.example").read_text())["Values"]


def test_every_setting_the_code_reads_is_declared() -> None:
    used = {name for path in (ROOT / "dicomweb").rglob("*.py") for name in NAME.findall(path.read_text())}
    assert used == set(SETTING_NAMES)


def test_local_settings_and_bicep_have_exactly_the_settings() -> None:
    assert {n for n in _example() if n.startswith("DICOMWEB_")} == set(SETTING_NAMES)
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    app_settings = set(re.findall(r"\{ name: '(DICOMWEB_[A-Z_]+)'", bicep))
    assert app_settings == set(SETTING_NAMES)
    outputs = set(re.findall(r"^output (DICOMWEB_[A-Z_]+) ", bicep, re.MULTILINE))
    assert outputs - {"DICOMWEB_BASE_URL"} <= set(SETTING_NAMES)


def test_the_example_values_parse() -> None:
    settings = Settings.from_env(_example())
    assert settings.has_storage
    assert (settings.instance_container, settings.sidecar_container) == ("dicom-instances", "dicom-sidecars")
    assert settings.block_size == 8 * 1024 * 1024 and settings.frame_cache_seconds == 30
    assert settings.cors_origins == ("*",)


def test_defaults_without_any_setting() -> None:
    settings = Settings.from_env({})
    assert not settings.has_storage
    assert settings.cosmos_database == "dicomweb" and settings.upload_concurrency == 4


def test_route_prefix_matches_host_json_and_readme() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ROUTE_PREFIX == "v1"
    assert "http://127.0.0.1:8080/v1" in (ROOT / "README.md").read_text()


def test_readme_commands_are_the_ci_script() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.+?)\n```", readme, re.DOTALL)
    assert commands[:2] == ["bash .ci/run serve", "bash .ci/run"]
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111
