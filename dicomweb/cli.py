"""The ``dicomweb`` command: ``serve`` (local host with emulators), ``reindex`` and ``upload``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from dicomweb.config import Settings


async def _reindex_if_empty(settings: Settings) -> None:
    from dicomweb.reindex import reindex
    from dicomweb.service import Service

    service = await Service.create(settings)
    try:
        if await service.index.count() == 0:
            report = await reindex(service)
            if report.indexed:
                print(f"reindexed {report.indexed} instances from Blob ({report.rebuilt} sidecars rebuilt)")
    finally:
        await service.close()


def serve(host: str, port: int, data_dir: Path) -> None:
    """Serve the registered functions; start Azurite and the Cosmos server when no storage is configured."""
    import uvicorn

    from dicomweb.local.emulators import Emulators

    emulators = None
    if not Settings.from_env().has_storage:
        emulators = Emulators(data_dir)
        os.environ.update(emulators.start())
        print(f"started Azurite (blob data in {data_dir / 'azurite'}) and the Cosmos DB protocol server")
    try:
        from dicomweb.api.http import ROUTE_PREFIX
        from dicomweb.api.local_host import build_app

        base = f"http://{host}:{port}" + (f"/{ROUTE_PREFIX}" if ROUTE_PREFIX else "")
        os.environ.setdefault("DICOMWEB_PUBLIC_BASE_URL", base)
        asyncio.run(_reindex_if_empty(Settings.from_env()))
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import function_app

        print(f"DICOMweb base URL: {base}", flush=True)
        uvicorn.run(build_app(function_app.app), host=host, port=port, log_level="warning", access_log=False)
    finally:
        if emulators is not None:
            emulators.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dicomweb`` console script and ``python -m dicomweb``."""
    parser = argparse.ArgumentParser(prog="dicomweb", description="DICOMweb service for digital pathology")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the DICOMweb API locally")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8080)
    serve_cmd.add_argument("--data", type=Path, default=Path(".local"), help="emulator data folder")
    commands.add_parser("reindex", help="rebuild the Cosmos index from Blob")
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
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port, args.data)
        return 0
    if args.command == "upload":
        from dicomweb import uploader

        return uploader.main(args.paths, args.url, args.token, args.parallel, args.blocks, args.stow_max_mb,
                             args.state, args.progress, args.json)
    from dicomweb.reindex import reindex
    from dicomweb.service import Service

    async def run() -> None:
        service = await Service.create(Settings.from_env())
        try:
            report = await reindex(service)
        finally:
            await service.close()
        print(f"indexed {report.indexed} instances, rebuilt {report.rebuilt} sidecars, "
              f"finished {report.deleted} interrupted deletions, removed {report.removed_generations} older "
              f"generations and {report.removed_sidecars} orphan sidecars")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
