"""What the decode-header checks cost: transcoded and rendered frame GETs with the checks on vs off.

Every decode first reads the frame's codestream header and holds it against the instance's Image Pixel
attributes (``dicomweb/dicom/codestream.py``). One ``dicomweb serve`` measured both ways, so that caches,
heap and CPU placement are the same for both: a ``sitecustomize`` this benchmark writes and puts on that
process's ``PYTHONPATH`` only (no setting switches the check off) wraps ``codestream.check`` so that
SIGUSR1 turns it into a no-op and back. After each switch a frame whose header claims one column more
than its instance shows which way it is: 409 with the checks, the decoder's own 406 without.

Scenarios, 256² tiles (a slide's usual frame): JPEG → native transcode, rendered JPEG of a JPEG frame,
HTJ2K → native transcode. A round is eight phases, the checks on and off in ABBA order (a drift of the
machine's speed weighs on both alike); a phase is ``--batch`` random frame GETs per scenario by
``--clients`` clients. Compared: the p50 of all the latencies of each way, and the median of the
rounds' p50 ratios. Also, in-process and without HTTP: the check's time per frame against the decode's.

Target: frame p50 with the checks ≤ 1.05× without. Prints a table and one JSON line.
Run: ``.venv/bin/python bench/bench_codestream.py`` (``--rounds``, ``--batch``, ``--clients``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import HTJ2KLossless, JPEGBaseline8Bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_load import percentile  # noqa: E402
from bench.bench_render import concurrent_gets  # noqa: E402

from dicomweb.dicom import codecs, codestream  # noqa: E402
from dicomweb.dicom.codecs import PixelFormat  # noqa: E402
from dicomweb.local.emulators import Emulators  # noqa: E402
from tests.conftest import Server, fresh_settings, source_frames, start_server  # noqa: E402
from tests.wsi_factory import SlideFile, make_slide  # noqa: E402

NATIVE = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
#: name → (stored syntax, path after the frame number, Accept)
SCENARIOS = {
    "JPEG → native": (JPEGBaseline8Bit, "", NATIVE),
    "rendered JPEG of JPEG": (JPEGBaseline8Bit, "/rendered", "image/jpeg"),
    "HTJ2K → native": (HTJ2KLossless, "", NATIVE),
}
#: The order of the phases of a round: a drift of the machine's speed within it weighs on both alike.
ABBA = ("on", "off", "off", "on", "off", "on", "on", "off")
SWITCH = '''"""Written by bench/bench_codestream.py: SIGUSR1 switches this service's decode-header checks off and on."""
import signal

from dicomweb.dicom import codestream

_check = codestream.check
_on = [True]


def check(*args, **kwargs):
    if _on[0]:
        _check(*args, **kwargs)


def _switch(signum, frame):
    _on[0] = not _on[0]


codestream.check = check
signal.signal(signal.SIGUSR1, _switch)
'''


def _url(server: Server, file: SlideFile) -> str:
    return f"{server.base_url}/studies/{file.study_uid}/series/{file.series_uid}/instances/{file.sop_uid}"


def _wider(server: Server, directory: Path) -> SlideFile:
    """A stored frame claiming 257×256 in a 256×256 instance: 409 when headers are checked, 406 when not."""
    (file,) = make_slide(directory / "wider", levels=1, base_size=(256, 256), associated=False)
    ds = pydicom.dcmread(file.path)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xc0")
    frame[sof + 7 : sof + 9] = (257).to_bytes(2, "big")  # X, the samples per line (ITU-T T.81 §B.2.2)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(file.path, enforce_file_format=True)
    os.kill(server.process.pid, signal.SIGUSR1)  # off, to store it
    stored = httpx.post(f"{server.base_url}/studies", content=file.path.read_bytes(),
                        headers={"content-type": "application/dicom"}, timeout=60)
    assert stored.status_code == 200, f"the checks are still on at ingest: {stored.text}"
    _switch(server, file, True)
    return file


def _switch(server: Server, wider: SlideFile, on: bool) -> None:
    """Turn the service's checks ``on`` (or off), and see that they are."""
    os.kill(server.process.pid, signal.SIGUSR1)
    status = httpx.get(f"{_url(server, wider)}/frames/1", headers={"accept": NATIVE}, timeout=60).status_code
    assert status == (409 if on else 406), f"checks {'on' if on else 'off'}, and the wider frame answers {status}"


def _in_process(files: dict[str, SlideFile]) -> dict[str, dict[str, float]]:
    """µs per frame of the check and of the decode, over every frame of each stored slide."""
    out = {}
    fmt = PixelFormat(256, 256, 3, 8, 8, False, "RGB", 0)
    for syntax, file in files.items():
        frames = source_frames(file.path)
        ybr = PixelFormat(256, 256, 3, 8, 8, False, pydicom.dcmread(file.path).PhotometricInterpretation, 0)
        started = time.perf_counter()
        for _ in range(20):
            for frame in frames:
                codestream.check(frame, syntax, fmt)
        check = (time.perf_counter() - started) / (20 * len(frames))
        started = time.perf_counter()
        for frame in frames:
            codecs.decode(frame, syntax, ybr)
        decode = (time.perf_counter() - started) / len(frames)
        out[syntax] = {"check_us": check * 1e6, "decode_us": decode * 1e6, "share": check / decode}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="requests per scenario between two switches")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (one: the least noise, "
                                                                "since the client shares the service's cores)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = Emulators(work / "emulators")
        settings = stack.start()
        (work / "patch").mkdir()
        (work / "patch" / "sitecustomize.py").write_text(SWITCH)
        (work / "serve").mkdir()
        server = start_server(fresh_settings(settings), work / "serve", PYTHONPATH=str(work / "patch"))
        latencies: dict[str, dict[str, list[float]]] = {name: {"on": [], "off": []} for name in SCENARIOS}
        ratios_by_round: dict[str, list[float]] = {name: [] for name in SCENARIOS}
        try:
            wider = _wider(server, work)
            files = {}
            for syntax in sorted({s for s, _, _ in SCENARIOS.values()}):
                (files[syntax],) = make_slide(work / syntax, transfer_syntax=syntax, levels=1,
                                              base_size=(4096, 2048), associated=False, noise=4)
                assert httpx.post(f"{server.base_url}/studies", content=files[syntax].path.read_bytes(),
                                  headers={"content-type": "application/dicom"}, timeout=120).status_code == 200
            for syntax, path, accept in SCENARIOS.values():  # warm: records, sidecars, the frames once from Blob
                file = files[syntax]
                asyncio.run(concurrent_gets([f"{_url(server, file)}/frames/{n}{path}"
                                             for n in range(1, file.number_of_frames + 1)], {"accept": accept},
                                            args.clients))
            rng = random.Random(7)
            on = True
            for _ in range(args.rounds):
                this_round: dict[str, dict[str, list[float]]] = {name: {"on": [], "off": []} for name in SCENARIOS}
                for label in ABBA:
                    if (label == "on") != on:
                        on = not on
                        _switch(server, wider, on)
                    for name, (syntax, path, accept) in SCENARIOS.items():
                        file = files[syntax]
                        numbers = [rng.randrange(1, file.number_of_frames + 1) for _ in range(args.batch)]
                        got = asyncio.run(concurrent_gets([f"{_url(server, file)}/frames/{n}{path}"
                                                           for n in numbers], {"accept": accept},
                                                          args.clients)).latencies
                        latencies[name][label] += got
                        this_round[name][label] += got
                for name, values in this_round.items():
                    ratios_by_round[name].append(percentile(values["on"], 0.5) / percentile(values["off"], 0.5))
            local = _in_process(files)
        finally:
            server.stop()
            stack.stop()
    summary = {name: {label: percentile(values, 0.5) * 1000 for label, values in labels.items()}
               for name, labels in latencies.items()}
    ratios = {name: values["on"] / values["off"] for name, values in summary.items()}
    round_ratios = {name: statistics.median(values) for name, values in ratios_by_round.items()}
    met = all(ratio <= 1.05 for ratio in ratios.values())
    print(f"{'frame GET, 256² tiles':24} {'p50 on ms':>10} {'p50 off ms':>11} {'on/off':>7} {'by round':>9}"
          "   (target ≤ 1.05×)")
    for name, values in summary.items():
        print(f"{name:24} {values['on']:10.2f} {values['off']:11.2f} {ratios[name]:6.3f}× {round_ratios[name]:8.3f}×")
    print(f"{'in-process, per frame':24} {'check µs':>10} {'decode µs':>11} {'share':>7}")
    for syntax, values in local.items():
        print(f"{syntax:24} {values['check_us']:10.1f} {values['decode_us']:11.1f} {values['share']:7.2%}")
    print(f"{'met' if met else 'NOT met'}: {args.rounds} rounds of {len(ABBA)} phases × {args.batch} requests per "
          f"scenario, {args.clients} clients")
    print(json.dumps({"bench": "codestream", "p50_ms": summary, "ratios": ratios, "round_ratios": ratios_by_round,
                      "in_process": local, "met": met}))
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
