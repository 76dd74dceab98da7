"""``dicomweb upload`` against the running service: STOW or sessions by size, resume, retries, output, exit codes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from dicomweb import uploader as uploader_module
from dicomweb.errors import InvalidDataset
from dicomweb.uploader import Result, Uploader, find_files, report
from tests.conftest import ROOT, Server
from tests.scanner_files import make_ome_tiff, make_svs
from tests.wsi_factory import make_large_instance, make_slide


def _upload(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomweb", "upload", *args, "--url", server.base_url],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _results(run: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    """file name → its result, from ``--json`` output."""
    return {Path(r["path"]).name: r for r in map(json.loads, run.stdout.splitlines())}


def _table_row(output: str, name: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if f"/{name}" in line]
    return line.split()


def test_a_folder_goes_by_stow_and_sessions_and_a_rerun_finds_it_stored(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "slide"
    files = make_slide(folder, levels=2, base_size=(1200, 900))
    large = make_large_instance(folder / "large.dcm", frames=120, frame_bytes=50000, study_uid=files[0].study_uid)
    (folder / "README.txt").write_text("not DICOM")
    state = tmp_path / "state.json"
    run = _upload(server, str(folder), "--stow-max-mb", "2", "--state", str(state))
    assert run.returncode == 0, run.stdout + run.stderr
    header, *_, summary = run.stdout.splitlines()
    assert header.split()[:2] == ["status", "MB"]
    assert summary.startswith(f"{len(files) + 1} stored, 0 already stored, 0 failed, 1 skipped")
    for file in files:
        assert _table_row(run.stdout, file.path.name)[0] == "stored"
    status, _, _, ingest, tries, sop, *_ = _table_row(run.stdout, "large.dcm")
    assert (status, sop, tries) == ("stored", large.sop_uid, "1") and float(ingest) > 0, "sessions report their ingest"
    assert "README.txt" not in run.stdout and "1 file skipped as not DICOM (--verbose lists them)" in run.stdout
    assert json.loads(state.read_text()) == {}, "finished sessions leave nothing to resume"
    frames = httpx.get(f"{server.base_url}/studies/{large.study_uid}/series/{large.series_uid}/instances/"
                       f"{large.sop_uid}/frames/120", headers={"accept": "image/jpeg"})
    assert frames.status_code == 200
    again = _upload(server, str(folder), "--stow-max-mb", "2", "--state", str(state), "--json", "--verbose")
    assert again.returncode == 0
    assert {name: r["status"] for name, r in _results(again).items()} == {
        **{f.path.name: "exists" for f in files}, "large.dcm": "exists", "README.txt": "skipped"}


def test_a_failed_instance_makes_the_exit_code_non_zero(server: Server, tmp_path: Path) -> None:
    good = make_slide(tmp_path / "good", levels=1, associated=False, base_size=(300, 300))[0]
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(5000))
    run = _upload(server, str(good.path), str(broken), str(tmp_path / "missing.dcm"), "--state",
                  str(tmp_path / "state.json"), "--json")
    assert run.returncode == 1
    results = _results(run)
    assert results[good.path.name]["status"] == "stored"
    assert results["broken.dcm"]["status"] == "failed" and "43264" in results["broken.dcm"]["detail"]
    assert results["missing.dcm"]["status"] == "failed" and results["missing.dcm"]["detail"] == "no such file"


def test_an_interrupted_session_is_resumed_with_only_the_missing_blocks(server: Server, tmp_path: Path) -> None:
    large = make_large_instance(tmp_path / "large.dcm", frames=400, frame_bytes=50000)
    original = large.path.read_bytes()
    session = httpx.post(f"{server.base_url}/uploads", json={"size": len(original)}).json()
    sent = session["blocks"][: len(session["blocks"]) // 2]
    for block in sent:
        response = httpx.put(f"{session['uploadUrl']}&comp=block&blockid={block['id']}",
                             content=original[block["offset"] : block["offset"] + block["length"]])
        assert response.status_code == 201
    # The file changes inside a block that already arrived (a JPEG comment byte), keeping its size and mtime:
    # a resumed upload that resent that block would store the change.
    stat = large.path.stat()
    at = original.index(b"frame 1 ")
    assert at < sent[-1]["offset"] + sent[-1]["length"]
    large.path.write_bytes(original[:at] + b"F" + original[at + 1 :])
    os.utime(large.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({f"{server.base_url}|{large.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}":
                                 session["id"]}))
    run = _upload(server, str(large.path), "--stow-max-mb", "1", "--state", str(state))
    assert run.returncode == 0, run.stdout + run.stderr
    assert httpx.get(session["statusUrl"]).json()["status"] == "stored", "the same session was finished"
    stored = httpx.get(f"{server.base_url}/studies/{large.study_uid}/series/{large.series_uid}/instances/"
                       f"{large.sop_uid}", headers={"accept": "application/dicom; transfer-syntax=*"}).content
    assert hashlib.sha256(stored).digest() == hashlib.sha256(original).digest()


async def _upload_to(stow: Callable[[web.Request], Awaitable[web.Response]], path: Path,
                     tmp_path: Path) -> list[Result]:
    """Upload ``path`` to a real local HTTP server whose STOW-RS answers come from ``stow``."""
    app = web.Application(client_max_size=2**30)
    app.router.add_post("/v1/studies", stow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        uploader = Uploader(f"http://127.0.0.1:{port}/v1", progress=False, state_path=tmp_path / "state.json")
        return await uploader.run([path])
    finally:
        await runner.cleanup()


def test_transient_failures_are_retried_with_the_whole_body(tmp_path: Path) -> None:
    """A real HTTP server that answers STOW with 503 twice, then stores."""
    instance = make_slide(tmp_path, levels=1, associated=False, base_size=(300, 300))[0]
    bodies = []

    async def flaky(request: web.Request) -> web.Response:
        bodies.append(len(await request.read()))
        if len(bodies) <= 2:
            return web.Response(status=503)
        return web.json_response({"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [instance.sop_uid]}}]}}, content_type="application/dicom+json")

    (result,) = asyncio.run(_upload_to(flaky, instance.path, tmp_path))
    assert (result.status, result.sop) == ("stored", instance.sop_uid)
    assert bodies == [instance.path.stat().st_size] * 3


def test_find_files_walks_folders_and_skips_what_is_not_part10(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    dicom = tmp_path / "a" / "b" / "x.dcm"
    dicom.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / "b" / "slide.svs").write_bytes(b"II*\x00")
    files, scanner, others = find_files([tmp_path / "a"])
    assert files == [dicom]
    assert scanner == [tmp_path / "a" / "b" / "slide.svs"], "converted before it is uploaded"
    assert [(r.path.name, r.status) for r in others] == [("notes.txt", "skipped")]
    files, scanner, others = find_files([tmp_path / "a" / "notes.txt"])
    assert (files, scanner, others) == ([], [tmp_path / "a" / "notes.txt"], []), "named: converted, or a failure"


def _failed_sop(sop: str, reason: int) -> dict:
    return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [sop]},
                                               "00081197": {"vr": "US", "Value": [reason]}}]}}


@pytest.mark.parametrize(("answers", "status", "attempts"), [
    ([272, 272, 200], "stored", 3),
    ([45070], "exists", 1),
    ([43264], "failed", 1),
    ([272] * 5, "failed", 5),
], ids=["processing-failure-retried", "duplicate-not-retried", "invalid-not-retried", "gives-up"])
def test_processing_failures_are_retried_with_backoff_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    answers: list[int], status: str,
                                                                    attempts: int) -> None:
    """A real HTTP server answering STOW with 409 and the given failure reasons (200: stored) in turn."""
    monkeypatch.setattr(uploader_module, "STORE_BACKOFF", 0.05)
    instance = make_slide(tmp_path, levels=1, associated=False, base_size=(300, 300))[0]
    seen: list[float] = []

    async def stow(request: web.Request) -> web.Response:
        await request.read()
        seen.append(time.perf_counter())
        reason = answers[len(seen) - 1]
        if reason == 200:
            return web.json_response({"00081199": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [instance.sop_uid]}}]}}, content_type="application/dicom+json")
        return web.json_response(_failed_sop(instance.sop_uid, reason), status=409,
                                 content_type="application/dicom+json")

    (result,) = asyncio.run(_upload_to(stow, instance.path, tmp_path))
    assert (result.status, result.sop, result.attempts) == (status, instance.sop_uid, attempts)
    assert len(seen) == attempts
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert all(later >= earlier * 0.9 for earlier, later in zip(gaps, gaps[1:])) or len(gaps) < 2, "backoff grows"
    out = io.StringIO()
    report([result], 1.0, out)
    assert f" {attempts} " in out.getvalue().splitlines()[1]
    assert f"{int(attempts > 1)} retried after a processing failure" in out.getvalue()


def test_skipped_files_are_one_line_unless_verbose(tmp_path: Path) -> None:
    """A source tree's 35,788 non-DICOM files used to print a row each."""
    results = [Result(tmp_path / f"src{i}.py", 10, "skipped", detail="not DICOM Part 10") for i in range(5000)]
    results.append(Result(tmp_path / "slide.dcm", 10**6, "stored", sop="1.2.3"))
    quiet, verbose, as_json = io.StringIO(), io.StringIO(), io.StringIO()
    report(results, 1.0, quiet)
    report(results, 1.0, verbose, verbose=True)
    report(results, 1.0, as_json, as_json=True)
    assert len(quiet.getvalue().splitlines()) == 4  # header, the stored row, the skipped count, the summary
    assert "5000 files skipped as not DICOM (--verbose lists them)" in quiet.getvalue()
    assert "1 stored, 0 already stored, 0 failed, 5000 skipped" in quiet.getvalue()
    assert len(verbose.getvalue().splitlines()) == 5003 and "--verbose" not in verbose.getvalue()
    assert [json.loads(line)["status"] for line in as_json.getvalue().splitlines()] == ["stored"]


def test_scanner_files_are_converted_and_stored_and_a_rerun_finds_them_stored(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    make_svs(folder / "slide.svs")
    make_ome_tiff(folder / "other.ome.tiff")
    run = _upload(server, str(folder), "--patient-id", "P-5", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    by_source = {}
    for row in rows:
        by_source.setdefault(Path(row["path"]).name, []).append(row["status"])
    assert by_source == {"slide.svs": ["stored"] * 6, "other.ome.tiff": ["stored"] * 3}
    assert all(row["detail"].startswith("from ") for row in rows)
    study = httpx.get(f"{server.base_url}/studies", params={"PatientID": "P-5"}).json()
    assert len(study) == 2, "two slides, each its own study"
    again = _upload(server, str(folder), "--patient-id", "P-5", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {json.loads(line)["status"] for line in again.stdout.splitlines()} == {"exists"}, "the same UIDs again"


def test_a_named_file_that_cannot_be_converted_fails_the_upload(server: Server, tmp_path: Path) -> None:
    (tmp_path / "slide.svs").write_bytes(b"II*\x00" + bytes(100))
    (tmp_path / "notes.txt").write_text("not a slide")
    run = _upload(server, str(tmp_path / "slide.svs"), str(tmp_path / "notes.txt"))
    assert run.returncode == 1
    assert _table_row(run.stdout, "slide.svs")[0] == "failed" and "slide.svs cannot be converted" in run.stdout
    assert _table_row(run.stdout, "notes.txt")[0] == "failed"


def test_nothing_of_a_slide_is_committed_before_the_whole_file_is_converted(server: Server, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts of a scanner file travel while the next is written, but a file that fails after its first part
    (here: the converter's real first part, then a failure) stores nothing and drops its open session."""
    make_svs(tmp_path / "slide.svs", size=(2048, 1536))
    real = uploader_module.Converter.parts
    written: list[list[Path]] = []

    def fails_after_the_first_part(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for part in real(*args, **kwargs):
            written.append(part)
            yield part
            raise InvalidDataset("slide.svs cannot be converted: the second level is damaged")

    monkeypatch.setattr(uploader_module.Converter, "parts", fails_after_the_first_part)
    calls: list[tuple[str, str, int]] = []
    request = Uploader._request

    async def spy(self, method, url, **kwargs):
        answer = await request(self, method, url, **kwargs)
        calls.append((method, url.split("?")[0], answer[0]))
        return answer

    monkeypatch.setattr(Uploader, "_request", spy)
    uploader = Uploader(server.base_url, stow_max_bytes=1, progress=False, state_path=tmp_path / "state.json")
    slide = uploader_module.Slide(tmp_path / "slide.svs", uploader_module.convert.SlideMetadata(patient_id="P-GATE"),
                                  tmp_path / "work")
    (result,) = asyncio.run(uploader.run([], [slide]))
    assert (result.status, result.path.name) == ("failed", "slide.svs") and "second level" in result.detail
    assert len(written) == 1 and not any(p.exists() for p in written[0]), "the first part was written, then removed"
    sessions = [m for m, url, _ in calls if url.endswith("/uploads")]
    assert sessions == ["POST"] * len(written[0]) == ["POST"], "the base level: its blocks travelled"
    assert any(m == "PUT" for m, _, _ in calls), "blocks were put"
    assert [status for m, _, status in calls if m == "DELETE"] == [204], "its session was dropped"
    assert not any(url.endswith("/commit") or url.endswith("/studies") for _, url, _ in calls), "nothing committed"
    assert httpx.get(f"{server.base_url}/studies", params={"PatientID": "P-GATE"}).json() == []


@pytest.mark.parametrize("finish", ["in place", "replaced"])
def test_the_base_level_travels_while_it_is_written_and_its_header_goes_last(server: Server, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            finish: str) -> None:
    """A level written as wsidicom writes one (the header and a Basic Offset Table of zeros first, then the frames,
    then the table filled in): the blocks past the table are put while the file grows, those holding the header and
    the table once it is complete, and the stored instance is the finished file, byte for byte. A file finished by
    replacing it (as wsidicom does when a Basic Offset Table overflows) drops what travelled and goes again."""
    level = make_large_instance(tmp_path / "level.dcm", frames=1400, frame_bytes=50000)
    final = level.path.read_bytes()
    first_frame = final.index(struct.pack("<HHI", 0xFFFE, 0xE000, 50000))
    table = final.rindex(b"\xfe\xff\x00\xe0", 0, first_frame)  # the table's item header
    finished: list[float] = []

    def writes_like_wsidicom(converter, source, work, metadata, name=None, check=True, starting=None):  # noqa: ANN001, ANN202, ARG001
        folder = work / "level-0"
        starting(folder)
        folder.mkdir(parents=True)
        target = folder / "written.dcm"
        with target.open("wb") as out:
            out.write(final[: table + 8] + bytes(first_frame - table - 8))
            for at in range(first_frame, len(final), 4 * 2**20):
                out.write(final[at : at + 4 * 2**20])
                out.flush()
                time.sleep(0.1)
            out.seek(table + 8)
            out.write(final[table + 8 : first_frame])
        if finish == "replaced":
            (folder / "written.tmp").write_bytes(final)
            (folder / "written.tmp").replace(target)
        finished.append(time.monotonic())
        yield [target]

    monkeypatch.setattr(uploader_module.Converter, "parts", writes_like_wsidicom)
    puts: list[tuple[int, float]] = []
    deleted: list[int] = []
    request = Uploader._request

    async def spy(self, method, url, **kwargs):  # noqa: ANN001, ANN202
        answer = await request(self, method, url, **kwargs)
        if method == "DELETE":
            deleted.append(answer[0])
        if method == "PUT" and answer[0] == 201:
            block = url.split("blockid=")[1]
            puts.append((int(base64.b64decode(block)), time.monotonic()))
        return answer

    monkeypatch.setattr(Uploader, "_request", spy)
    uploader = Uploader(server.base_url, stow_max_bytes=1, progress=False, state_path=tmp_path / "state.json")
    slide = uploader_module.Slide(level.path, uploader_module.convert.SlideMetadata(), tmp_path / "work")
    (result,) = asyncio.run(uploader.run([], [slide]))
    assert result.status == "stored", result.detail
    block = 8 * 2**20
    count = -(-len(final) // block)
    early = [index for index, at in puts if at < finished[0]]
    assert len(early) >= count // 2, f"only blocks {early} of {count} travelled while the file was written"
    assert 0 not in early and min(early) * block >= first_frame, "the header and the table went last"
    if finish == "in place":
        assert sorted(index for index, _ in puts) == list(range(count)) and deleted == [], "every block once"
    else:
        assert deleted == [204], "the followed session was dropped"
        assert {index for index, at in puts if at > finished[0]} == set(range(count)), "all again"
    stored = httpx.get(f"{server.base_url}/studies/{level.study_uid}/series/{level.series_uid}/instances/"
                       f"{level.sop_uid}", headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=60)
    assert stored.content == final


def test_a_cut_scanner_file_fails_the_upload_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    """The uploader checks the file while the converter's process writes it: a cut SVS, which the readers would
    convert into a slide missing its lower levels, label and macro, fails with the reason and stores nothing."""
    make_svs(tmp_path / "whole.svs", size=(4096, 3072))
    data = (tmp_path / "whole.svs").read_bytes()
    (tmp_path / "slide.svs").write_bytes(data[: int(len(data) * 0.9)])
    run = _upload(server, str(tmp_path / "slide.svs"), "--patient-id", "P-CUT", "--stow-max-mb", "1", "--json")
    assert run.returncode == 1
    (row,) = _results(run).values()
    assert row["status"] == "failed" and "slide.svs cannot be converted: the file is cut short" in row["detail"]
    assert httpx.get(f"{server.base_url}/studies", params={"PatientID": "P-CUT"}).json() == []
