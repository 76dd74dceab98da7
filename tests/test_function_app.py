"""``function_app.py`` as Azure builds and runs it: deployment parity.

The Flex Consumption remote build installs ``requirements.txt`` and nothing else, and runs
the app from the deployment package's root (on ``sys.path``, not pip-installed) with the
files ``.funcignore`` lets through. These tests build exactly that: a fresh virtual
environment from ``requirements.txt`` alone and a copy of the package's files. In it the
worker must import ``function_app`` and index every function, every module the package
imports must resolve, and the local host run from it must store an instance and serve its
frames. The dev environment (``requirements-dev.txt``) hides a missing runtime dependency;
this one does not.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image
from wsidicom import WsiDicom

import function_app
from dicomweb.api.local_host import registered
from tests.conftest import ROOT, fresh_settings, source_frames, start_server
from tests.scanner_files import make_svs
from tests.wsi_factory import make_slide

#: What the worker does at start: import the app and read each function's bindings.
INDEX_SCRIPT = """
import json
import function_app
print(json.dumps({f.get_function_name(): json.loads(f.get_function_json()) for f in function_app.app.get_functions()}))
"""
#: Packages of our own in the app root (everything else a module imports is stdlib or from requirements.txt).
OWN = {"dicomweb", "function_app"}


@dataclass
class Deployment:
    """A copy of the deployment package and the environment the platform builds for it."""

    root: Path
    python: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the environment's Python in the package root, as the worker does (no dev paths leak in)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        return subprocess.run([str(self.python), "-s", *args], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=300)


def package_files(root: Path = ROOT) -> list[str]:
    """The files a deployment package carries: the project's files less what ``.funcignore`` excludes
    (matched by git, whose ignore syntax is the one ``.funcignore`` uses)."""
    def listed(*extra: str) -> set[str]:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *extra], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        return {name for name in out.splitlines() if (root / name).is_file()}

    return sorted(listed() - listed("--ignored", "--exclude-from=.funcignore"))


def build(requirements: Path, where: Path) -> Deployment:
    """A fresh virtual environment from ``requirements`` alone and a copy of the package's files."""
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    python = where / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
                    "-r", str(requirements)], check=True, capture_output=True)
    root = where / "app"
    for name in package_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    return Deployment(root, python)


def third_party_imports(root: Path) -> set[str]:
    """Top-level modules imported anywhere in the package's Python files (at module level or lazily),
    other than the standard library's and the app's own."""
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - OWN - {"__future__"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return build(ROOT / "requirements.txt", tmp_path_factory.mktemp("deployed"))


def test_the_package_carries_the_app_and_nothing_of_development() -> None:
    files = package_files()
    assert {"function_app.py", "host.json", "requirements.txt", "dicomweb/__init__.py",
            "dicomweb/storage/indexing-policy.json"} <= set(files)
    for name in files:
        assert not name.startswith(("tests/", "bench/", "node_modules/", ".venv/", ".local/", "infra/", ".ci/")), name
        assert name != "local.settings.json" and not name.endswith(".md"), name


def test_the_worker_imports_the_app_and_indexes_every_function(deployed: Deployment) -> None:
    indexed = deployed.run("-c", INDEX_SCRIPT)
    assert indexed.returncode == 0, indexed.stderr
    functions = json.loads(indexed.stdout)
    assert functions == {f.get_function_name(): json.loads(f.get_function_json()) for f in registered(function_app.app)}
    for name, function in functions.items():
        assert function["scriptFile"] == "function_app.py"
        triggers = [b for b in function["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, name
        if triggers[0]["type"] == "httpTrigger":
            assert triggers[0]["authLevel"] == "ANONYMOUS" and triggers[0]["route"], name
        if triggers[0]["type"] == "queueTrigger":
            assert triggers[0]["connection"] == "DICOMWEB_QUEUES"
            assert triggers[0]["queueName"] == {"jobs": "%DICOMWEB_JOBS_QUEUE%",
                                                "blob_events": "%DICOMWEB_BLOB_EVENTS_QUEUE%",
                                                "inbox_events": "%DICOMWEB_INBOX_QUEUE%"}[name]
    names = set(functions)
    assert {"stow_studies", "retrieve_frames", "search_studies", "upload_cleanup", "jobs", "blob_events",
            "availability_reconcile", "rehydrate_series", "inbox_events", "inbox_status"} <= names, names


def test_every_module_the_package_imports_resolves_in_the_deployed_environment(deployed: Deployment) -> None:
    """Lazy imports too (inside functions): they fail only when their path runs, in Azure."""
    modules = sorted(third_party_imports(deployed.root))
    assert {"azure", "pydicom", "numpy", "imagecodecs", "PIL"} <= set(modules)
    probe = deployed.run("-c", "import importlib.util, json, sys\n"
                               "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))",
                         *modules)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == [], "imported by the app, missing from requirements.txt"


def test_a_runtime_dependency_left_out_of_requirements_fails_the_import(deployed: Deployment) -> None:
    """The check above has teeth: with azure-cosmos missing from the environment (as it would be, left out of
    requirements.txt: nothing else brings it) the worker cannot start. The package is hidden from the deployed
    environment's imports rather than left out of a second build, which took half a minute."""
    hidden = ("import importlib.abc, sys\n"
              "class Missing(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'azure.cosmos' or name.startswith('azure.cosmos.'):\n"
              "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
              "sys.meta_path.insert(0, Missing())\n")
    failed = deployed.run("-c", hidden + INDEX_SCRIPT)
    assert failed.returncode != 0 and "No module named 'azure.cosmos'" in failed.stderr
    assert deployed.run("-c", INDEX_SCRIPT).returncode == 0, "and only because of it"


def test_the_deployed_app_stores_and_serves_through_the_local_host(
        deployed: Deployment, emulators: dict[str, str], tmp_path: Path) -> None:
    (level,) = make_slide(tmp_path / "slide", levels=1, base_size=(512, 512), associated=False)
    server = start_server(fresh_settings(emulators), tmp_path, python=str(deployed.python), app_root=deployed.root,
                          concurrency=4)
    try:
        stored = httpx.post(f"{server.base_url}/studies", content=level.path.read_bytes(),
                            headers={"content-type": "application/dicom"}, timeout=60)
        assert stored.status_code == 200, stored.text
        instance = (f"{server.base_url}/studies/{level.study_uid}/series/{level.series_uid}"
                    f"/instances/{level.sop_uid}")
        frame = httpx.get(f"{instance}/frames/2", headers={"accept": "image/jpeg"}, timeout=60)
        assert frame.status_code == 200 and frame.content == source_frames(level.path)[1]
        rendered = httpx.get(f"{instance}/frames/1/rendered", headers={"accept": "image/png"}, timeout=60)
        assert rendered.status_code == 200, rendered.text
        assert Image.open(io.BytesIO(rendered.content)).size == (256, 256)
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


#: Converts ``argv[1]`` into ``argv[2]`` as the deployed app does, with the system's TurboJPEG library hidden from
#: opentile as the Function App's image lacks it: ``find_library`` finds no turbojpeg and PyTurboJPEG's default paths
#: are gone (each of opentile's first two looks), and no ``TURBOJPEG`` is set. Prints whether opentile then finds a
#: library by itself, what ``convert`` wrote, the TurboJPEG files mapped into the process, and what the inbox's
#: :class:`~dicomweb.converter.Converter` wrote in a process spawned from the deployed environment.
HIDDEN_TURBOJPEG_SCRIPT = """
import ctypes.util, json, os, sys
from pathlib import Path
os.environ.pop("TURBOJPEG", None)
found = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if "turbojpeg" in name else found(name)
import turbojpeg
turbojpeg.DEFAULT_LIB_PATHS.clear()
from opentile.jpeg.jpeg import find_turbojpeg_path
try:
    alone = str(find_turbojpeg_path())
except FileNotFoundError:
    alone = None
from dicomweb.convert import convert
from dicomweb.converter import Converter
written = convert(Path(sys.argv[1]), Path(sys.argv[2]))
mapped = sorted({line.split()[-1] for line in open("/proc/self/maps") if "turbojpeg" in line or "pylibjxl" in line})
with Converter() as converter:  # the inbox's way: a process of its own, spawned from the deployed environment
    apart = [str(p) for part in converter.parts(Path(sys.argv[1]), Path(sys.argv[2]) / "apart") for p in part]
print(json.dumps({"alone": alone, "written": [str(p) for p in written], "mapped": mapped, "apart": apart}))
"""


def test_the_deployed_app_converts_an_svs_without_a_system_turbojpeg(deployed: Deployment, tmp_path: Path) -> None:
    """opentile copies an SVS's tiles with libjpeg-turbo's TurboJPEG library, which the Function App's image lacks
    (without it wsidicomizer falls back to tiffslide, which re-encodes every tile); the wheel in requirements.txt
    carries it and ``convert`` points opentile at it (``dicomweb/turbojpeg.py``)."""
    source = tmp_path / "slide.svs"
    make_svs(source)
    ran = deployed.run("-c", HIDDEN_TURBOJPEG_SCRIPT, str(source), str(tmp_path / "out"))
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["alone"] is None, "the system library is not hidden: this test would prove nothing"
    assert len(result["mapped"]) == 1, (f"TurboJPEG libraries loaded: {result['mapped']} (none: opentile could not "
                                        "open the SVS, and tiffslide re-encoded its tiles instead of copying them)")
    (mapped,) = result["mapped"]
    assert mapped.startswith(f"{deployed.python.parent.parent}/") and "/site-packages/pylibjxl/_pylibjxl" in mapped
    assert len(result["written"]) == 6  # three levels, the thumbnail, the label and the macro image
    assert sorted(Path(p).name for p in result["apart"]) == sorted(Path(p).name for p in result["written"])
    with tifffile.TiffFile(source) as tif:
        expected = tif.series[0].levels[0].asarray()
    with WsiDicom.open(tmp_path / "out") as wsi:
        region = np.asarray(wsi.read_region((300, 200), 0, (512, 384)).convert("RGB"))
    assert np.array_equal(region, expected[200:584, 300:812]), "tiles copied as the scanner wrote them"
