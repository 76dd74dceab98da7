"""Settings (``dicomweb/config.py``): what the code reads, the files that provide it and the README, in step.

Fast and offline: reads files only. ``dicomweb.config.SETTING_NAMES`` is the single list;
``local.settings.json.example`` (local Functions host) and the README's configuration table
must name exactly those settings (``tests/test_infra.py`` holds the Bicep side).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from dicomweb.api.http import ROUTE_PREFIX
from dicomweb.config import MIB, SETTING_NAMES, Settings

ROOT = Path(__file__).resolve().parents[1]
#: A setting's name; ``__camelCase`` names a property of a connection (``DICOMWEB_QUEUES__queueServiceUri``).
NAME = re.compile(r"\bDICOMWEB_[A-Z0-9_]+(?:__[a-z][A-Za-z]*)?\b")
LITERAL = re.compile(r"""(["'])(DICOMWEB_[A-Z0-9_]+(?:__[a-z][A-Za-z]*)?)\1""")


def example_values() -> dict[str, str]:
    return json.loads((ROOT / "local.settings.json.example").read_text())["Values"]


def readme() -> str:
    return (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    return [block.strip() for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", readme(), re.DOTALL)]


def test_setting_names_are_unique_and_well_formed() -> None:
    assert len(SETTING_NAMES) == len(set(SETTING_NAMES))
    assert all(NAME.fullmatch(name) for name in SETTING_NAMES)


# (a) local settings provide exactly the settings the code reads.


def test_local_settings_example_has_every_setting_and_no_stale_one() -> None:
    values = example_values()
    assert set(SETTING_NAMES) <= set(values), "missing: " + ", ".join(sorted(set(SETTING_NAMES) - set(values)))
    text = (ROOT / "local.settings.json.example").read_text()
    assert set(NAME.findall(text)) == set(SETTING_NAMES), "stale DICOMWEB_* names in local.settings.json.example"


def test_local_settings_example_is_a_functions_settings_file() -> None:
    data = json.loads((ROOT / "local.settings.json.example").read_text())
    values = data["Values"]
    assert data["IsEncrypted"] is False
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert all(isinstance(v, str) for v in values.values()), "Functions settings values must be strings"


# (b) the package reads no setting that is not declared.


def test_every_setting_literal_in_the_package_is_declared() -> None:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "dicomweb").rglob("*"):
        if path.suffix in (".py", ".js") and path.is_file():
            for _, name in LITERAL.findall(path.read_text()):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    undeclared = {name: sorted(paths) for name, paths in found.items() if name not in SETTING_NAMES}
    assert not undeclared, f"DICOMWEB_* names read but not in SETTING_NAMES: {undeclared}"
    config = (ROOT / "dicomweb" / "config.py").read_text()
    read = {name for _, name in LITERAL.findall(config[: config.index("SETTING_NAMES =")])}
    assert read == set(SETTING_NAMES), "SETTING_NAMES must list exactly what Settings.from_env reads"


# (c) the example parses to the documented defaults.


def test_example_values_are_the_defaults() -> None:
    parsed = Settings.from_env(example_values())
    assert parsed.has_storage
    assert parsed.instance_container == "dicom-instances"
    assert parsed.sidecar_container == "dicom-sidecars"
    assert parsed.cosmos_database == "dicomweb"
    assert parsed.cosmos_container == "index"
    assert parsed.storage_account_url == parsed.cosmos_endpoint == parsed.public_base_url == ""
    assert parsed.block_size == 8 * MIB and parsed.max_header_bytes == 64 * MIB
    assert isinstance(parsed.upload_concurrency, int) and parsed.upload_concurrency == 4
    assert all(isinstance(v, int) for v in (parsed.frame_index_cache_mb, parsed.frame_cache_mb,
                                            parsed.frame_cache_seconds))
    local_only = dataclasses.replace(parsed, storage_connection_string="", queue_connection_string="",
                                     cosmos_connection_string="")
    assert local_only == Settings.from_env({}) == Settings(), "example values must equal config.py's defaults"


def test_int_settings_parse_and_blank_means_default() -> None:
    values = {**example_values(), "DICOMWEB_BLOCK_SIZE_MB": "16", "DICOMWEB_UPLOAD_CONCURRENCY": " 8 ",
              "DICOMWEB_FRAME_CACHE_SECONDS": ""}
    parsed = Settings.from_env(values)
    assert parsed.block_size == 16 * MIB and parsed.upload_concurrency == 8
    assert parsed.frame_cache_seconds == Settings().frame_cache_seconds
    with pytest.raises(ValueError):
        Settings.from_env({"DICOMWEB_BLOCK_SIZE_MB": "eight"})


# (d) the base URL: host.json, the code and the README agree.


def test_route_prefix_matches_host_json_and_readme() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ROUTE_PREFIX
    assert f"http://127.0.0.1:8080/{ROUTE_PREFIX}" in readme()
    assert "http://127.0.0.1:8080/v1" in readme()


def test_readme_configuration_table_documents_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(DICOMWEB_[A-Z0-9_]+(?:__[a-z][A-Za-z]*)?)` \| ([^|]*) \|", readme(),
                           re.MULTILINE))
    assert set(rows) == set(SETTING_NAMES), "README configuration table out of step with SETTING_NAMES"
    values = example_values()
    for name, default in rows.items():
        shown = re.fullmatch(r"`([^`]*)`", default.strip())
        if shown:
            assert shown.group(1) == values[name], f"README default of {name}: {default.strip()}"


# (e) the README's two commands are the CI script.


def test_readme_starts_with_the_two_commands() -> None:
    assert readme_commands()[:2] == ["bash .ci/run serve", "bash .ci/run"]


def test_ci_script_is_executable_bash() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
