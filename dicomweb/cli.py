"""The ``dicomweb`` command: ``serve`` (local host with emulators), ``reindex``, ``check``, ``upload``, ``convert``
(scanner files to DICOM), ``lifecycle`` (the Bicep's lifecycle policy run on the local store) and ``usage`` (what
the store holds and costs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dicomweb.config import Settings
from dicomweb.dicom.syntax import is_part10_file

if TYPE_CHECKING:
    from dicomweb.convert import SlideMetadata

#: A reindex whose jobs nobody takes for this long says so (the service is not running).
NO_WORKER_SECONDS = 30
#: The Flex Consumption scale settings the Bicep deploys (its per-instance HTTP concurrency among them).
SCALE_JSON = Path(__file__).resolve().parents[1] / "infra" / "scale.json"


def deployed_concurrency() -> int:
    """The per-instance HTTP concurrency Azure runs the app with, so that ``serve`` admits as many requests."""
    return int(json.loads(SCALE_JSON.read_text())["httpPerInstanceConcurrency"])


async def _reindex_if_empty(settings: Settings) -> None:
    from dicomweb.reindex import reindex
    from dicomweb.service import Service

    service = await Service.create(settings)
    try:
        if await service.index.count() == 0:
            report = await reindex(service, in_flight_seconds=0)  # an empty index: no writer is at work
            if report.indexed:
                print(f"reindexed {report.indexed} instances from Blob ({report.rebuilt} sidecars rebuilt)")
    finally:
        await service.close()


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end ``serve`` as Ctrl-C does, so that it stops the emulators it started.

    While uvicorn runs it handles SIGINT and SIGTERM itself (a graceful shutdown) and
    raises the signal again once it has stopped, which reaches these handlers.
    """
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    def hang_up(signum: int, frame: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the same graceful path as SIGTERM

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, hang_up)


def _local_defaults() -> None:
    """What ``serve`` assumes unless told otherwise: no authentication, any browser origin, forwarding
    headers believed from this machine, the default job queue, logs on stderr.

    Authentication is off only when neither an issuer nor ``DICOMWEB_AUTH_DISABLED`` is
    set: an explicit ``DICOMWEB_AUTH_DISABLED=false`` keeps the service failing closed.
    """
    if not os.environ.get("DICOMWEB_AUTH_ISSUER", "").strip() and not os.environ.get("DICOMWEB_AUTH_DISABLED", "").strip():
        os.environ["DICOMWEB_AUTH_DISABLED"] = "true"
        print("authentication is off (DICOMWEB_AUTH_DISABLED=true): set DICOMWEB_AUTH_ISSUER and "
              "DICOMWEB_AUTH_AUDIENCE to require tokens", flush=True)
    if not os.environ.get("DICOMWEB_CORS_ORIGINS", "").strip():
        os.environ["DICOMWEB_CORS_ORIGINS"] = "*"
    if not os.environ.get("DICOMWEB_TRUSTED_PROXIES", "").strip():
        # A reverse proxy on this machine (nginx, a dev server) tells which origin the viewer used.
        os.environ["DICOMWEB_TRUSTED_PROXIES"] = "127.0.0.1,::1"
    # The queue triggers name their queues by these settings (%DICOMWEB_JOBS_QUEUE%), as the Functions host reads them.
    os.environ["DICOMWEB_JOBS_QUEUE"] = Settings.from_env().jobs_queue
    os.environ["DICOMWEB_BLOB_EVENTS_QUEUE"] = Settings.from_env().blob_events_queue
    os.environ["DICOMWEB_INBOX_QUEUE"] = Settings.from_env().inbox_queue
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    service_log = logging.getLogger("dicomweb")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    service_log.propagate = False


def _lifecycle_every(hours: float, stop: threading.Event) -> None:
    """Run the lifecycle policy every ``hours`` (as if no time had passed) until ``stop``, in a thread of its own:
    what Azure's daily lifecycle run does, for ``serve --lifecycle-hours``."""
    from dicomweb.local.lifecycle import run_lifecycle

    log = logging.getLogger("dicomweb.lifecycle")

    def loop() -> None:
        while not stop.wait(hours * 3600):
            try:
                report = asyncio.run(run_lifecycle(Settings.from_env()))
                log.info("lifecycle run: examined %d blobs, %s", report.examined, report.counts or "nothing to do")
            except Exception:
                log.exception("lifecycle run failed")

    threading.Thread(target=loop, name="lifecycle", daemon=True).start()


def serve(host: str, port: int, data_dir: Path, concurrency: int, lifecycle_hours: float = 0) -> None:
    """Serve the registered functions, ``concurrency`` requests at a time; start Azurite and the Cosmos server
    when no storage is configured; with ``lifecycle_hours``, run the lifecycle policy that often.

    Only one ``serve`` may use a data folder (:mod:`dicomweb.local.datadir`).
    """
    import uvicorn

    from dicomweb.local.datadir import DataDir
    from dicomweb.local.emulators import Emulators

    _stop_on_signals()
    emulators = None
    folder = None
    lifecycle_stop = threading.Event()
    try:
        if not Settings.from_env().has_storage:
            folder = DataDir(data_dir)
            folder.acquire()
            emulators = Emulators(data_dir)
            started = emulators.start()
            os.environ.update(started)
            folder.publish(started)
            print(f"started Azurite (blob data in {data_dir / 'azurite'}) and the Cosmos DB protocol server")
        from dicomweb.api.http import ROUTE_PREFIX
        from dicomweb.api.local_host import build_app

        base = f"http://{host}:{port}" + (f"/{ROUTE_PREFIX}" if ROUTE_PREFIX else "")
        _local_defaults()
        asyncio.run(_reindex_if_empty(Settings.from_env()))
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import function_app

        if lifecycle_hours > 0:
            _lifecycle_every(lifecycle_hours, lifecycle_stop)
        print(f"DICOMweb base URL: {base}", flush=True)
        uvicorn.run(build_app(function_app.app, concurrency), host=host, port=port, log_level="warning", access_log=False)
    finally:
        lifecycle_stop.set()
        if emulators is not None:
            emulators.stop()
        if folder is not None:
            folder.release()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dicomweb`` console script and ``python -m dicomweb``."""
    parser = argparse.ArgumentParser(prog="dicomweb", description="DICOMweb service for digital pathology")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the DICOMweb API locally")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8080)
    serve_cmd.add_argument("--data", type=Path, default=Path(".local"), help="emulator data folder")
    serve_cmd.add_argument("--concurrency", type=int, help="HTTP requests in flight at once, the rest waiting "
                           "(default: the per-instance concurrency the Bicep gives each Azure instance)")
    serve_cmd.add_argument("--lifecycle-hours", type=float, default=0, metavar="H",
                           help="run the lifecycle policy every H hours, as Azure does daily (default: never)")
    reindex_cmd = commands.add_parser("reindex", help="rebuild the Cosmos index from Blob")
    reindex_cmd.add_argument("--here", action="store_true",
                             help="rebuild in this process instead of one queue job per study (no worker needed)")
    reindex_cmd.add_argument("--offline", action="store_true",
                             help="no store or delete is running: also act on what was written in the last hour, "
                                  "which is otherwise left to its writer")
    check_cmd = commands.add_parser("check", help="compare Blob and the index; exit 1 on any inconsistency")
    check_cmd.add_argument("--repair", action="store_true", help="fix what the check finds, then check again")
    for command in (reindex_cmd, check_cmd):
        command.add_argument("--data", type=Path, default=Path(".local"),
                             help="without storage settings: the data folder of a running `dicomweb serve`")
    usage_cmd = commands.add_parser("usage", help="what the store holds and costs a month, per access tier")
    usage_cmd.add_argument("--json", action="store_true", help="the JSON of GET /usage instead of the table")
    usage_cmd.add_argument("--top", type=_at_least_zero, default=20, metavar="N",
                           help="the N largest studies listed one by one, the rest summed (default 20)")
    usage_cmd.add_argument("--data", type=Path, default=Path(".local"),
                           help="without storage settings: the data folder of a running `dicomweb serve`")
    upload_cmd = commands.add_parser("upload", help="store DICOM files and folders in a DICOMweb service")
    upload_cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    upload_cmd.add_argument("--url", required=True, help="DICOMweb base URL, e.g. http://127.0.0.1:8080/v1")
    upload_cmd.add_argument("--token", help="bearer token for the service")
    upload_cmd.add_argument("--parallel", type=int, default=4, help="instances at once (default 4)")
    upload_cmd.add_argument("--blocks", type=int, default=32, help="blocks in flight (default 32)")
    upload_cmd.add_argument("--stow-max-mb", type=int, default=64,
                            help="larger instances go through upload sessions (default 64)")
    upload_cmd.add_argument("--state", type=Path, help="resume file (default ~/.cache/dicomweb/uploads.json)")
    upload_cmd.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                            help="progress bar (default: when stderr is a terminal)")
    upload_cmd.add_argument("--json", action="store_true", help="one JSON object per file instead of the table")
    upload_cmd.add_argument("--verbose", action="store_true", help="list the files skipped as not DICOM too")
    convert_cmd = commands.add_parser("convert", help="make DICOM whole-slide images of scanner files (SVS, NDPI, "
                                      "Philips TIFF, OME-TIFF, …)")
    convert_cmd.add_argument("paths", nargs="+", type=Path, metavar="SRC", help="scanner files or folders")
    convert_cmd.add_argument("--out", type=Path, required=True, help="folder to write into (a folder per file)")
    for command in (convert_cmd, upload_cmd):
        command.add_argument("--metadata", type=Path, help="scanner files: JSON or CSV of metadata per file name")
        for option, keyword in (("--patient-id", "PatientID"), ("--patient-name", "PatientName"),
                                ("--accession-number", "AccessionNumber"), ("--study-uid", "StudyInstanceUID"),
                                ("--container-id", "ContainerIdentifier"),
                                ("--specimen-description", "SpecimenDescription")):
            command.add_argument(option, help=f"scanner files: {keyword} of every slide (over the metadata file's)")
    convert_cmd.add_argument("--json", action="store_true", help="one JSON object per file")
    lifecycle_cmd = commands.add_parser("lifecycle", help="apply the Bicep's lifecycle policy to the store as "
                                        "Azure's daily run does")
    lifecycle_cmd.add_argument("--data", type=Path, default=Path(".local"),
                               help="without storage settings: the data folder of a running `dicomweb serve`, "
                                    "else emulators are started on it for the run")
    lifecycle_cmd.add_argument("--days", type=_at_least_zero, default=0, metavar="N",
                               help="evaluate as if N days had passed (default 0)")
    lifecycle_cmd.add_argument("--json", action="store_true", help="a JSON report instead of the table")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from dicomweb.local.datadir import DataDirInUse

        try:
            concurrency = deployed_concurrency() if args.concurrency is None else args.concurrency
            serve(args.host, args.port, args.data, concurrency, args.lifecycle_hours)
        except DataDirInUse as exc:
            print(f"dicomweb serve: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "upload":
        from dicomweb.converter import Converter

        # A file named on the command line that is not DICOM is converted: the converter's process starts now,
        # importing the converter (a second) while this one imports the uploader.
        converter = Converter(args.progress).start() if any(map(_named_non_dicom, args.paths)) else None
        from dicomweb import uploader

        return uploader.main(args.paths, args.url, args.token, args.parallel, args.blocks, args.stow_max_mb,
                             args.state, args.progress, args.json, args.verbose, _slide_options(args), args.metadata,
                             converter)
    if args.command == "convert":
        from dicomweb import convert

        return convert.main(args.paths, args.out, _slide_options(args), args.metadata, args.json)
    if args.command == "lifecycle":
        return _lifecycle(args.data, args.days, args.json)
    _local_stack_settings(args.data)
    if args.command == "usage":
        return asyncio.run(_usage(args.json, args.top))
    if args.command == "check":
        return asyncio.run(_check(args.repair))
    return asyncio.run(_reindex(args.here, args.offline))


def _local_stack_settings(data_dir: Path) -> None:
    """Without storage settings, point this command at the emulators of the ``serve`` holding ``data_dir``."""
    from dicomweb.local.datadir import running_settings

    if not Settings.from_env().has_storage:
        os.environ.update(running_settings(data_dir))


def _lifecycle(data_dir: Path, days: int, as_json: bool) -> int:
    """Run the lifecycle policy as if ``days`` had passed and print what moved. Without storage settings it runs on
    the emulators of the ``serve`` holding ``data_dir``, or on emulators it starts there for the run."""
    from dicomweb.local.datadir import DataDir, DataDirInUse
    from dicomweb.local.emulators import Emulators
    from dicomweb.local.lifecycle import run_lifecycle

    _local_stack_settings(data_dir)
    emulators = None
    folder = DataDir(data_dir)
    try:
        if not Settings.from_env().has_storage:
            folder.acquire()
            emulators = Emulators(data_dir)
            os.environ.update(emulators.start())
        report = asyncio.run(run_lifecycle(Settings.from_env(), days))
    except DataDirInUse as exc:
        print(f"dicomweb lifecycle: {exc}", file=sys.stderr)
        return 1
    finally:
        if emulators is not None:
            emulators.stop()
        folder.release()
    print(json.dumps(report.as_json(), indent=2) if as_json else report.table())
    return 0


async def _reindex(here: bool, offline: bool) -> int:
    """Rebuild the index: fanned out over the job queue with a progress bar, or ``here`` in this process;
    ``offline``: no writer is at work, so nothing is left to one (see :mod:`dicomweb.reindex`)."""
    from tqdm import tqdm

    from dicomweb import reindex
    from dicomweb.service import Service

    in_flight = 0 if offline else reindex.IN_FLIGHT_SECONDS
    service = await Service.create(Settings.from_env())
    try:
        if here:
            report = await reindex.reindex(service, in_flight)
        else:
            run = await reindex.start(service, in_flight)
            print(f"reindex {run.id}: {run.total} studies sent to the job queue {service.settings.jobs_queue}",
                  flush=True)
            waited = 0
            with tqdm(total=run.total, unit="study", file=sys.stderr, desc="reindex") as bar:
                while not (progress := await reindex.progress(service, run.id)).finished:
                    bar.update(progress.done - bar.n)
                    waited = 0 if progress.done else waited + 1
                    if waited == NO_WORKER_SECONDS:
                        bar.write("no partition is done yet: is the service running to take the jobs? "
                                  "(--here rebuilds in this process)")
                    await asyncio.sleep(1)
                bar.update(progress.done - bar.n)
            assert progress.report is not None
            report = progress.report
    finally:
        await service.close()
    print(f"indexed {report.indexed} instances, rebuilt {report.rebuilt} sidecars, finished {report.finished} "
          f"interrupted stores and deletions, removed {report.removed_generations} unnamed generations and "
          f"{report.removed_sidecars} orphan sidecars")
    if report.in_flight:
        print(f"left {report.in_flight} generations to writers still at work (--offline when none is)")
    if report.unindexable:
        print(f"{report.unindexable} files cannot be indexed (the service log names them and why)", file=sys.stderr)
        return 1
    return 0


def _named_non_dicom(path: Path) -> bool:
    """Whether ``path`` is a file but not a Part 10 file (``dicomweb.uploader.find_files`` converts every such file
    named)."""
    try:
        return not is_part10_file(path)
    except OSError:  # a folder, or no such file: find_files says
        return False


def _slide_options(args: argparse.Namespace) -> SlideMetadata:
    """The metadata options of ``convert`` and ``upload`` for scanner files."""
    from dicomweb.convert import SlideMetadata

    return SlideMetadata(args.patient_id, args.patient_name, args.accession_number, args.study_uid, args.container_id,
                         args.specimen_description)


def _at_least_zero(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


async def _usage(as_json: bool, top: int) -> int:
    """Print what the store holds and costs (:mod:`dicomweb.usage`): a table, or the JSON of ``GET /usage``."""
    from dicomweb import usage
    from dicomweb.errors import DicomWebError
    from dicomweb.storage.clients import blob_store

    settings = Settings.from_env()
    blobs = blob_store(settings)
    try:
        report = await usage.measure(blobs.inventory, settings.prices_per_gb_month, top)
    except DicomWebError as exc:
        print(f"dicomweb usage: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await blobs.close()
    print(json.dumps(report, indent=2) if as_json else usage.table(report))
    return 0


async def _check(repair: bool) -> int:
    """Print every inconsistency; with ``repair`` fix them and print what is left. 1 unless clean."""
    from dicomweb import check
    from dicomweb.service import Service

    service = await Service.create(Settings.from_env())
    try:
        report = await check.check(service)
        for problem in report.problems:
            print(problem)
        print(f"checked {report.files} instance files and {report.documents} index documents: "
              f"{len(report.problems)} inconsistencies")
        if repair and not report.clean:
            report = await check.repair(service)
            for problem in report.problems:
                print(problem)
            print(f"repaired; {len(report.problems)} inconsistencies left")
    finally:
        await service.close()
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
