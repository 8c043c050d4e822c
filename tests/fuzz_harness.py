"""Mutated input files through every loader and through ``emseg info`` / ``emseg predict``.

Used by ``tests/test_fuzz.py`` (hypothesis, fixed seed, a bounded number of cases that fits CI)
and by ``benchmarks/fuzz_long.py`` (10 000 cases from a seeded RNG). Every case is one clean
seed file (TIFF, ``.npy``, DeepSCEM HDF5, ``config.json``) with a few byte-level or structural
mutations, run in a separate worker process so that a hang (or a crash of a C library) is
observed from outside and cannot take the test run with it.

Outcomes of one case:
- ``clean``: an :class:`~fiji_emseg.errors.EmsegError` (exit 2 for the command line);
- ``correct``: read or predicted, with the shape of the seed file (what its metadata says);
- ``other``: any other exception, or another exit code, or the worker died;
- ``hang``: no answer within the time limit;
- ``wrong_shape``: read or predicted with a shape that differs from the file's.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import shutil
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

OUTCOMES = ("clean", "correct", "other", "hang", "wrong_shape")
KINDS = ("tiff", "tiff_zlib", "tiff_plain", "tiff_float", "npy", "npy_float", "hdf5", "config")
SUFFIX = {"tiff": ".tif", "tiff_zlib": ".tif", "tiff_plain": ".tif", "tiff_float": ".tif", "npy": ".npy",
          "npy_float": ".npy", "hdf5": ".h5", "config": ".json"}
INTERESTING = (0, 1, 2, 3, 7, 8, 16, 39, 64, 127, 128, 255, 256, 1000, 32767, 32768, 65535, 65536,
               2**31 - 1, 2**31, 2**32 - 1)


class Chooser(Protocol):
    """Where the random decisions come from: a numpy RNG (long run) or hypothesis (CI)."""

    def int(self, low: int, high: int) -> int: ...  # inclusive


class RngChooser:
    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def int(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))


# --------------------------------------------------------------------------- seed files


@dataclass(frozen=True)
class Seed:
    kind: str
    data: bytes
    shape: tuple[int, ...]  # (Z, Y, X) of the image; for hdf5: shapes of the samples, flattened
    #: (offset, width) of the places where a damaged copy does most harm: the numeric TIFF tag
    #: values (sizes, offsets, counts, sample format) and the digits of the ImageJ header.
    hotspots: tuple[tuple[int, int], ...] = ()


def tiff_hotspots(data: bytes) -> tuple[tuple[int, int], ...]:
    import tifffile

    spots: list[tuple[int, int]] = []
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for page in tif.pages:
            for tag in page.tags.values():
                if tag.dtype in (3, 4) and tag.count == 1:
                    spots.append((int(tag.valueoffset), 2 if tag.dtype == 3 else 4))
                elif tag.dtype in (3, 4) and tag.count > 1:  # strip offsets and byte counts
                    width = 2 if tag.dtype == 3 else 4
                    spots.extend((int(tag.valueoffset) + i * width, width) for i in range(min(tag.count, 8)))
    start = data.find(b"ImageJ=")
    if start >= 0:
        end = data.find(b"\x00", start)
        spots.extend((i, 0) for i in range(start, end) if chr(data[i]).isdigit())  # width 0: a digit
    return tuple(spots)


def make_seeds(folder: Path) -> dict[str, Seed]:
    """Small clean files of each kind, plus the tiny model folder the config cases start from."""
    import numpy as np
    from emseg_testdata import blob_volume, random_model_dir

    from fiji_emseg.engine.data.deepscem_io import write_deepscem_dataset
    from fiji_emseg.engine.data.sample import Sample
    from fiji_emseg.engine.data.volume_io import Calibration, write_volume
    from fiji_emseg.engine.models.model_config import ModelConfig

    folder.mkdir(parents=True, exist_ok=True)
    image, masks = blob_volume((3, 32, 32), n=12, half=3)
    cal = Calibration((0.04, 0.008, 0.008), "micron")
    seeds: dict[str, Seed] = {}

    def add(kind: str, path: Path, shape: tuple[int, ...]) -> None:
        data = path.read_bytes()
        spots = tiff_hotspots(data) if path.suffix == ".tif" else ()
        if path.suffix == ".npy":  # the digits of the header: shape and dtype size
            end = data.find(b"}")
            spots = tuple((i, 0) for i in range(end) if chr(data[i]).isdigit())
        seeds[kind] = Seed(kind, data, shape, spots)

    write_volume(folder / "s_tiff.tif", image, cal)
    add("tiff", folder / "s_tiff.tif", (3, 32, 32))
    write_volume(folder / "s_zlib.tif", image.astype(np.uint16) * 3, cal, compression="zlib")
    add("tiff_zlib", folder / "s_zlib.tif", (3, 32, 32))
    import tifffile

    tifffile.imwrite(folder / "s_plain.tif", image[0, :24, :])  # a plain 2D TIFF, no ImageJ header
    add("tiff_plain", folder / "s_plain.tif", (1, 24, 32))
    write_volume(folder / "s_float.tif", image.astype(np.float32) / 255, cal)
    add("tiff_float", folder / "s_float.tif", (3, 32, 32))
    np.save(folder / "s.npy", image)
    add("npy", folder / "s.npy", (3, 32, 32))
    np.save(folder / "s_float.npy", image[:2].astype(np.float32))
    add("npy_float", folder / "s_float.npy", (2, 32, 32))
    write_deepscem_dataset(folder / "s.h5", [Sample("a", image, masks, ("mito",), cal),
                                             Sample("b", image[:2, :16], masks[:, :2, :16], ("mito",), cal)])
    add("hdf5", folder / "s.h5", (3, 32, 32, 2, 16, 32))
    model = random_model_dir(folder / "model", ModelConfig(classes=("mito",), depth=2, filters=4))
    seeds["config"] = Seed("config", (model / "config.json").read_bytes(), (3, 32, 32))
    write_volume(folder / "predict_me.tif", image, cal)
    return seeds


# --------------------------------------------------------------------------- mutations


def mutate_bytes(data: bytes, ch: Chooser, rounds: int | None = None) -> bytes:
    """A few byte-level edits of the kinds that damaged copies and hostile files show."""
    out = bytearray(data)
    for _ in range(rounds if rounds is not None else ch.int(1, 4)):
        if not out:
            break
        op = ch.int(0, 6)
        pos = ch.int(0, len(out) - 1)
        if op == 0:  # flip one bit
            out[pos] ^= 1 << ch.int(0, 7)
        elif op == 1:  # one random byte
            out[pos] = ch.int(0, 255)
        elif op in (2, 3):  # a 2- or 4-byte integer set to an interesting value (tags, sizes, offsets)
            width = 2 if op == 2 else 4
            value = INTERESTING[ch.int(0, len(INTERESTING) - 1)] & ((1 << (8 * width)) - 1)
            if pos + width <= len(out):
                struct.pack_into("<H" if width == 2 else "<I", out, pos, value)
        elif op == 4:  # truncate
            del out[max(1, pos):]
        elif op == 5:  # delete a short range
            del out[pos:pos + ch.int(1, 16)]
        else:  # duplicate a short range
            n = ch.int(1, 16)
            out[pos:pos] = out[pos:pos + n]
    return bytes(out)


def _json_value(ch: Chooser, depth: int = 0) -> Any:
    kind = ch.int(0, 7 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return bool(ch.int(0, 1))
    if kind == 2:
        return INTERESTING[ch.int(0, len(INTERESTING) - 1)] * (-1 if ch.int(0, 3) == 0 else 1)
    if kind == 3:
        return [0.0, 0.5, 1.0, -1.0, 1e308, 1e-9, 99.8][ch.int(0, 6)]
    if kind == 4:
        return ["", "x", "mito", "batch", "softmax", "percentile", "../../etc", "é"][ch.int(0, 7)]
    if kind == 5:
        return [0, 1][: ch.int(0, 2)]
    if kind == 6:
        return [_json_value(ch, depth + 1) for _ in range(ch.int(0, 3))]
    return {["a", "mito", "epoch", "radius"][ch.int(0, 3)]: _json_value(ch, depth + 1) for _ in range(ch.int(0, 2))}


def mutate_json(data: bytes, ch: Chooser) -> bytes:
    """Structural edits of a config.json (wrong types, missing or extra keys), sometimes bytes too."""
    if ch.int(0, 4) == 0:
        return mutate_bytes(data, ch)
    doc = json.loads(data)
    for _ in range(ch.int(1, 3)):
        paths: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    paths.append((node, k))
                    walk(v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    paths.append((node, i))
                    walk(v)

        walk(doc)
        if not paths:
            break
        parent, key = paths[ch.int(0, len(paths) - 1)]
        if isinstance(parent, dict) and ch.int(0, 5) == 0:
            del parent[key]
        else:
            parent[key] = _json_value(ch)
    return json.dumps(doc).encode()


def mutate_hotspots(data: bytes, spots: tuple[tuple[int, int], ...], ch: Chooser) -> bytes:
    """Set one to three tag values (or ImageJ header digits) to other plausible values."""
    out = bytearray(data)
    for _ in range(ch.int(1, 3)):
        offset, width = spots[ch.int(0, len(spots) - 1)]
        if width == 0:
            out[offset] = ord("0") + ch.int(0, 9)
            continue
        old = int.from_bytes(out[offset:offset + width], "little")
        choices = (old + 1, old - 1, old * 2, old // 2, 0, *INTERESTING)
        value = choices[ch.int(0, len(choices) - 1)] & ((1 << (8 * width)) - 1)
        out[offset:offset + width] = value.to_bytes(width, "little")
    return bytes(out)


def mutate(seed: Seed, ch: Chooser) -> bytes:
    if seed.kind == "config":
        return mutate_json(seed.data, ch)
    if seed.hotspots and ch.int(0, 1) == 0:
        return mutate_hotspots(seed.data, seed.hotspots, ch)
    return mutate_bytes(seed.data, ch)


# --------------------------------------------------------------------------- running one case (in the worker)


def _quiet_main(argv: list[str]) -> int:
    from fiji_emseg.cli.main import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def _predict_shape(model: Path, image: Path, out: Path) -> tuple[str, str]:
    from fiji_emseg.engine.data.volume_io import read_volume

    shutil.rmtree(out, ignore_errors=True)
    code = _quiet_main(["predict", str(model), str(image), "-o", str(out), "-q", "--backend", "torch", "--threads", "1"])
    if code == 2:
        return "clean", ""
    if code != 0:
        return "other", f"exit {code}"
    masks = sorted(out.glob("*_mask.tif"))
    if not masks:
        return "other", "exit 0 but no mask written"
    return "ok", "x".join(str(s) for s in read_volume(masks[0])[0].shape)


def _npy_header_shape(data: bytes) -> tuple[int, ...] | None:
    """The (Z, Y, X) shape a ``.npy`` header announces, parsed independently of the loader."""
    import numpy as np

    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        shape, _, _ = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(fh)
    except Exception:
        return None
    shape = tuple(int(n) for n in shape)
    return (1, *shape) if len(shape) == 2 else shape


def run_case(kind: str, data: bytes, work: Path, seeds_dir: Path, expected: tuple[int, ...], predict: bool) -> tuple[str, str]:
    """One mutated file through its loader (and the command line); returns (outcome, detail)."""
    import warnings

    from fiji_emseg.errors import EmsegError

    warnings.simplefilter("ignore")
    case = work / f"case{SUFFIX[kind]}"
    try:
        if kind == "config":
            model = work / "model"
            shutil.rmtree(model, ignore_errors=True)
            shutil.copytree(seeds_dir / "model", model)
            (model / "config.json").write_bytes(data)
            code = _quiet_main(["info", str(model)])
            if code not in (0, 2):
                return "other", f"info exit {code}"
            if not predict:
                return ("clean" if code == 2 else "correct"), ""
            outcome, shape = _predict_shape(model, seeds_dir / "predict_me.tif", work / "out")
            if outcome != "ok":
                return outcome, shape
            return ("correct", "") if shape == "x".join(map(str, expected)) else ("wrong_shape", shape)
        case.write_bytes(data)
        if kind == "hdf5":
            from fiji_emseg.engine.data.deepscem_io import read_deepscem_dataset

            samples = read_deepscem_dataset(case)
            shapes = tuple(n for s in samples for n in s.image.shape)
            for s in samples:
                if s.masks is None or tuple(s.masks.shape[1:]) != tuple(s.image.shape):
                    return "wrong_shape", f"masks {None if s.masks is None else s.masks.shape} vs image {s.image.shape}"
            return ("correct", "") if shapes == expected else ("wrong_shape", str(shapes))
        from fiji_emseg.engine.data.volume_io import read_volume

        if kind.startswith("npy"):  # the file's own metadata: a header changed consistently is a valid file
            expected = _npy_header_shape(data) or expected
        try:
            arr, _ = read_volume(case)
            loaded = "correct" if tuple(arr.shape) == expected else "wrong_shape"
            detail = str(arr.shape)
        except EmsegError:
            loaded, detail = "clean", ""
        if loaded == "wrong_shape" or not predict:
            return loaded, detail
        outcome, shape = _predict_shape(seeds_dir / "model", case, work / "out")
        if outcome != "ok":
            return ("clean" if outcome == "clean" else outcome), shape
        if loaded == "clean":
            return "other", "predict succeeded on a file that the loader refused"
        return ("correct", "") if shape == "x".join(map(str, expected)) else ("wrong_shape", shape)
    except EmsegError:
        return "clean", ""
    except Exception:
        return "other", traceback.format_exc(limit=6)[-1500:]


def _worker(conn: Any, root: str, seeds_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, root)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import torch

    logging.getLogger().addHandler(logging.NullHandler())  # library log lines are not the test's output
    torch.set_num_threads(1)
    work = Path(seeds_dir) / f"work-{os.getpid()}"
    work.mkdir(exist_ok=True)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(run_case(*msg[:2], work, Path(seeds_dir), *msg[2:]))


class Runner:
    """A worker process that runs cases one at a time; a case past *timeout* s counts as a hang."""

    def __init__(self, seeds_dir: Path, timeout: float = 30.0) -> None:
        self.seeds_dir = seeds_dir
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        root = str(Path(__file__).resolve().parents[1])
        self._proc = self._ctx.Process(target=_worker, args=(child, root, str(self.seeds_dir)), daemon=True)
        self._proc.start()
        child.close()

    def run(self, seed: Seed, data: bytes, predict: bool, timeout: float | None = None) -> tuple[str, str]:
        self._conn.send((seed.kind, data, seed.shape, predict))
        limit = timeout or self.timeout
        try:
            if self._conn.poll(limit):
                return self._conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            self._restart()
            return "other", "the worker process died (a crash in a C library?)"
        self._restart()
        return "hang", f"no answer within {limit:g} s"

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join()
        self._start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


def warm_up(runner: Runner, seeds: dict[str, Seed]) -> None:
    """Every clean seed must come out 'correct' (otherwise the oracle itself is wrong)."""
    for seed in seeds.values():
        outcome, detail = runner.run(seed, seed.data, predict=True, timeout=120)
        assert outcome == "correct", (seed.kind, outcome, detail)


def run_many(runner: Runner, seeds: dict[str, Seed], n: int, rng_seed: int, predict_every: int = 4,
             on_case: Callable[[int, str, str, str, bytes], None] | None = None) -> dict[str, dict[str, int]]:
    """*n* cases from a seeded RNG, round-robin over the kinds; counts per kind and outcome."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    ch = RngChooser(rng)
    counts: dict[str, dict[str, int]] = {k: dict.fromkeys(OUTCOMES, 0) for k in seeds}
    kinds = list(seeds)
    for i in range(n):
        seed = seeds[kinds[i % len(kinds)]]
        data = mutate(seed, ch)
        outcome, detail = runner.run(seed, data, predict=(i // len(kinds)) % predict_every == 0)
        counts[seed.kind][outcome] += 1
        if on_case is not None:
            on_case(i, seed.kind, outcome, detail, data)
    return counts
