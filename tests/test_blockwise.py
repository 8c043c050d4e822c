"""Block-wise, resumable, distributed prediction into OME-Zarr equals one-process prediction.

Real files (OME-Zarr, N5 written by TensorStore), real ONNX Runtime, real Dask worker
processes (a LocalCluster, and `dask scheduler` + `dask worker` subprocesses on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from emseg_testdata import blob_volume, random_model_dir

from fiji_emseg.engine.data.ome_zarr import validate_ome_zarr, write_ome_zarr
from fiji_emseg.engine.data.volume_io import Calibration, _wrap_array, open_volume
from fiji_emseg.engine.inference.blockwise import BlockwiseConfig, ResumeStore
from fiji_emseg.engine.inference.dask_runner import predict_blockwise
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.errors import ConfigError, InputDataError, OutputError
from fiji_emseg.export.onnx_export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
VOXEL = (0.04, 0.01, 0.01)
# 2D: the 40 x 300 x 300 volume, chunks 16 x 128 x 128 (smaller than the volume in every axis)
CASES = {
    "2d": {"shape": (40, 300, 300), "chunks": (16, 128, 128), "block": (16, 128, 128), "tile": (96, 96),
           "model": ModelConfig(classes=("a", "b"), depth=2, filters=4)},
    "3d": {"shape": (32, 128, 128), "chunks": (16, 64, 64), "block": (16, 64, 64), "tile": (24, 64, 64),
           "model": ModelConfig(classes=("a",), dims=3, depth=2, filters=4, z_poolings=1)},
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("blockwise")
    out: dict[str, dict] = {}
    for kind, case in CASES.items():
        model = random_model_dir(root / f"model{kind}", case["model"], seed=1)
        export_onnx(model)
        image, _ = blob_volume(case["shape"], n=120, seed=3)
        src = write_ome_zarr(_wrap_array(image, "x", Calibration(VOXEL, "micron")), root / f"in{kind}.ome.zarr",
                             chunks=case["chunks"], pyramid=False)
        config = PredictConfig(outputs=("masks", "probabilities"), tile=case["tile"], threads=1)
        with Predictor(model, config) as p:
            ref = p.predict(src)
        out[kind] = {**case, "root": root, "model_dir": model, "image": image, "input": src, "config": config,
                     "probs": ref.probabilities.transpose("class", "z", "y", "x").values,
                     "masks": ref.masks.transpose("class", "z", "y", "x").values}
    return out


def _bw(d: dict) -> BlockwiseConfig:
    return BlockwiseConfig(chunks=d["chunks"], block=d["block"])


def _assert_equal(d: dict, out: Path) -> None:
    g = zarr.open_group(str(out), mode="r")
    probs, masks = g["probabilities/0"][:], g["masks/0"][:]
    assert probs.shape == d["probs"].shape
    np.testing.assert_allclose(probs, d["probs"], atol=1e-5, rtol=0)
    assert set(np.unique(masks)) <= {0, 255}
    np.testing.assert_array_equal(masks > 0, d["masks"] > 0)
    assert json.loads((out / ".emseg" / "run.json").read_text())["complete"] is True


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_blockwise_in_process_equals_predict_and_writes_valid_ome_zarr(data: dict, kind: str) -> None:
    d = data[kind]
    out = d["root"] / f"here{kind}.ome.zarr"
    result = predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
    assert result.computed == result.blocks >= 8
    _assert_equal(d, out)
    assert validate_ome_zarr(out) == ["masks", "probabilities"]
    if kind == "3d":
        masks = open_volume(out / "masks")  # a 1-class image: the channel axis of size 1 is dropped
        assert masks.calibration == Calibration(VOXEL, "micron")
        assert result.levels == 2  # 128 -> 64: the second level fits one 64 x 64 chunk
        lv1 = open_volume(out / "masks", level=1)
        assert lv1.calibration.voxel_size == (0.04, 0.02, 0.02)  # anisotropic: z is not halved
        full = masks[:] > 0
        assert np.array_equal(lv1[:] > 0, full.reshape(32, 64, 2, 64, 2).any(axis=(2, 4)))  # masks by max
        with pytest.raises(InputDataError, match=r"has scale levels 0 to 1; level 2 does not exist"):
            open_volume(out / "masks", level=2)
    else:
        with pytest.raises(InputDataError, match=r"holds 2 channels \('c' axis\)"):
            open_volume(out / "masks")
        probs1 = zarr.open_group(str(out), mode="r")["probabilities/1"][:]
        np.testing.assert_allclose(probs1[:, :, :149, :149],  # probabilities by mean
                                   d["probs"][:, :, :298, :298].reshape(2, 40, 149, 2, 149, 2).mean(axis=(3, 5)), atol=1e-5)
    # the same command again: nothing to do; another model into the same store: refused in one line
    again = predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
    assert again.computed == 0


def test_rerun_with_another_model_is_refused(data: dict) -> None:
    d2, d3 = data["2d"], data["3d"]
    out = d2["root"] / "here2d.ome.zarr"
    if not out.exists():
        predict_blockwise(d2["model_dir"], d2["input"], out, d2["config"], _bw(d2))
    before = sorted(p.name for p in (out / ".emseg" / "done" / "0").iterdir())
    proc = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "predict", str(d3["model_dir"]), str(d2["input"]),
                           "-o", str(out), "--tile", *map(str, d3["tile"]), "-q"], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "holds a run with a different" in err[0] and "model" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in (out / ".emseg" / "done" / "0").iterdir()) == before


def test_killed_run_resumes_only_missing_blocks(data: dict) -> None:
    d = data["2d"]
    out = d["root"] / "killed.ome.zarr"
    cmd = [sys.executable, "-m", "fiji_emseg.cli.main", "predict", str(d["model_dir"]), str(d["input"]), "-o", str(out),
           "--tile", "96", "96", "--outputs", "masks", "probabilities", "--chunks", *map(str, d["chunks"]),
           "--block", *map(str, d["block"]), "--threads", "1", "-q"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_dir = out / ".emseg" / "done" / "0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(ResumeStore(out).done(0))
    total = int(np.prod([-(-n // b) for n, b in zip(d["shape"], d["block"], strict=True)]))
    assert 4 <= done < total
    assert json.loads((out / ".emseg" / "run.json").read_text())["complete"] is False
    result = predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
    assert (result.skipped, result.computed) == (done, total - done)
    _assert_equal(d, out)


def test_cli_local_cluster_with_two_workers_equals_predict(data: dict) -> None:
    d = data["2d"]
    out = d["root"] / "cluster.ome.zarr"
    proc = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "predict", str(d["model_dir"]), str(d["input"]),
                           "-o", str(out), "--workers", "2", "--tile", "96", "96", "--outputs", "masks", "probabilities",
                           "--chunks", *map(str, d["chunks"]), "--block", *map(str, d["block"])],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dask dashboard: http://" in proc.stderr and "on 2 worker(s)" in proc.stdout
    assert "block/s" in proc.stderr and "M voxels/s" in proc.stderr  # the tqdm bar over blocks
    _assert_equal(d, out)


@pytest.fixture()
def dask_processes(tmp_path: Path):
    """A real `dask scheduler` and two `dask worker` processes on the loopback interface."""
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"],
                                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_real_scheduler_and_workers_3d_with_a_worker_killed_mid_run(data: dict, dask_processes: str) -> None:
    """3D model on `dask scheduler` + 2 `dask worker`s; one worker process is SIGKILLed after the first block."""
    from distributed import Client

    d = data["3d"]
    out = d["root"] / "scheduler3d.ome.zarr"
    with Client(dask_processes, timeout=10) as client:
        pids = list(client.run(os.getpid).values())
    assert len(pids) == 2
    killed: list[int] = []

    def progress(done: int, total: int, voxels: int) -> None:
        if done == 1 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    result = predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d), scheduler=dask_processes,
                               progress=progress)
    assert killed and result.computed == result.blocks == 8
    _assert_equal(d, out)
    assert validate_ome_zarr(out) == ["masks", "probabilities"]


def test_unreachable_scheduler_fails_fast_in_one_line(data: dict) -> None:
    d = data["2d"]
    out = d["root"] / "nosched.ome.zarr"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1:9 .*dask scheduler"):
        predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d), scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 15
    assert not out.exists()


def test_bad_inputs_give_one_line_and_write_nothing(data: dict, tmp_path: Path) -> None:
    d = data["2d"]
    g = zarr.open_group(str(tmp_path / "notimage.zarr"), mode="w")
    g.create_array("a", shape=(2, 8, 8), dtype=np.uint8)
    g.create_array("b", shape=(2, 8, 8), dtype=np.uint8)
    bad = [(tmp_path / "notimage.zarr", None, r"is a zarr group with arrays \['a', 'b'\]"),
           (d["input"], 3, r"has scale levels 0 to 0; level 3 does not exist")]
    # an OME-Zarr with two channels, and one with time points
    for axis, kind in (("c", "channel"), ("t", "time")):
        p = tmp_path / f"{axis}.ome.zarr"
        root = zarr.open_group(str(p), mode="w", zarr_format=2)
        root.create_array("0", shape=(3, 4, 32, 32), chunks=(1, 4, 32, 32), dtype=np.uint8,
                          chunk_key_encoding={"name": "v2", "separator": "/"})
        axes = [{"name": axis, "type": kind}] + [{"name": a, "type": "space"} for a in "zyx"]
        root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1]}]}]}]
        bad.append((p, None, rf"holds 3 {'channels' if axis == 'c' else 'time points'} \('{axis}' axis\)"))
    for i, (src, level, msg) in enumerate(bad):
        out = tmp_path / f"out{i}.ome.zarr"
        with pytest.raises(InputDataError, match=msg) as exc:
            predict_blockwise(d["model_dir"], src, out, d["config"], BlockwiseConfig(level=level))
        assert "\n" not in str(exc.value)
        assert not out.exists()
    # an existing folder that is not ours is never touched
    other = tmp_path / "theirs.ome.zarr"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match=r"exists and is not a fiji-emseg block-wise output"):
        predict_blockwise(d["model_dir"], d["input"], other, d["config"], _bw(d))
    assert (other / "keep.txt").read_text() == "x"


def _write_n5(path: Path, image: np.ndarray, compression: dict) -> Path:
    """An N5 dataset as Fiji's N5 plugins write it: dimensions x, y, z and N5 Viewer's pixelResolution."""
    import tensorstore as ts

    ds = path / "raw" / "s0"
    z, y, x = image.shape
    t = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(ds)},
                 "metadata": {"dimensions": [x, y, z], "blockSize": [64, 64, 8], "dataType": "uint8",
                              "compression": compression}, "create": True}).result()
    t[...] = image.transpose(2, 1, 0)
    attrs = json.loads((ds / "attributes.json").read_text())
    attrs.update({"pixelResolution": {"unit": "um", "dimensions": [0.01, 0.01, 0.04]}, "downsamplingFactors": [1, 1, 1]})
    (ds / "attributes.json").write_text(json.dumps(attrs))
    return path


def test_n5_input_is_read_and_predicted(data: dict, tmp_path: Path) -> None:
    d = data["2d"]
    n5 = _write_n5(tmp_path / "stack.n5", d["image"], {"type": "gzip"})
    vol = open_volume(n5)
    assert vol.shape == d["image"].shape and vol.calibration == Calibration(VOXEL, "micron")
    np.testing.assert_array_equal(vol[5:9, 100:140, 7:50], d["image"][5:9, 100:140, 7:50])
    # an unsupported compression: one line naming it and the fix
    bad = _write_n5(tmp_path / "lz4.n5", d["image"][:2, :64, :64], {"type": "gzip"})
    attrs_file = bad / "raw" / "s0" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    attrs["compression"] = {"type": "lz4", "blockSize": 65536}
    attrs_file.write_text(json.dumps(attrs))
    with pytest.raises(InputDataError, match=r"N5 compression 'lz4' is not supported .*re-save it with gzip") as exc:
        predict_blockwise(d["model_dir"], bad, tmp_path / "o.ome.zarr", d["config"], _bw(d))
    assert "\n" not in str(exc.value) and not (tmp_path / "o.ome.zarr").exists()


def _disk_use(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (what fills a tmpfs), like ``du``."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


def test_full_disk_then_rerun_after_freeing_space_completes(data: dict, tmp_path: Path) -> None:
    d = data["2d"]
    # a disk with room for about half of the output: how much that is depends on how well this
    # machine's model output compresses, so it is measured rather than assumed
    predict_blockwise(d["model_dir"], d["input"], tmp_path / "whole.ome.zarr", d["config"], _bw(d))
    half_kib = max(_disk_use(tmp_path / "whole.ome.zarr") // 2048, 256)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={half_kib}k", "tmpfs", str(mnt)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        out = mnt / "full.ome.zarr"
        with pytest.raises(OutputError, match=r"the disk is full while writing .*full\.ome\.zarr; free some space") as exc:
            predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
        assert "\n" not in str(exc.value)
        record = ResumeStore(out).read()
        assert record is not None and record["complete"] is False
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        result = predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
        assert result.skipped > 0 and result.computed > 0
        _assert_equal(d, out)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_convert_tiff_to_ome_zarr_and_back(tmp_path: Path) -> None:
    from fiji_emseg.cli.main import main as cli
    from fiji_emseg.engine.data.volume_io import read_volume, write_volume

    image = (np.random.default_rng(0).random((20, 100, 120)) * 255).astype(np.uint8)
    write_volume(tmp_path / "s.tif", image, Calibration((0.05, 0.01, 0.01), "micron"))
    assert cli(["convert", "--volume", str(tmp_path / "s.tif"), "--output", str(tmp_path / "s.ome.zarr"),
                "--chunks", "8", "32", "32"]) == 0
    assert validate_ome_zarr(tmp_path / "s.ome.zarr") == ["s.ome.zarr"]
    vol = open_volume(tmp_path / "s.ome.zarr")
    assert vol.calibration == Calibration((0.05, 0.01, 0.01), "micron") and np.array_equal(vol[:], image)
    assert open_volume(tmp_path / "s.ome.zarr", level=2).shape == (20, 25, 30)
    assert cli(["convert", "--volume", str(tmp_path / "s.ome.zarr"), "--output", str(tmp_path / "back.tif")]) == 0
    back, cal = read_volume(tmp_path / "back.tif")
    assert np.array_equal(back, image) and cal == Calibration((0.05, 0.01, 0.01), "micron")
    assert cli(["convert", "--volume", str(tmp_path / "s.tif"), "--output", str(tmp_path / "s.ome.zarr")]) == 2


def test_cli_many_stacks_in_parallel_one_task_per_stack(data: dict, tmp_path: Path) -> None:
    import tifffile

    from fiji_emseg.engine.data.volume_io import write_volume

    d = data["2d"]
    folder = tmp_path / "stacks"
    for i in range(3):
        write_volume(folder / f"s{i}.tif", d["image"][i * 4:(i + 1) * 4, :128, :160])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "predict", str(d["model_dir"]), str(folder),
                           "-o", str(out), "--workers", "2", "--tile", "96", "96", "-q"],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("predicted 4×128×160 voxels") == 3
    with Predictor(d["model_dir"], PredictConfig(tile=d["tile"], threads=1)) as p:
        for i in range(3):
            ref = p.predict(folder / f"s{i}.tif").masks.transpose("class", "z", "y", "x").values
            for k, cls in enumerate(("a", "b")):
                assert np.array_equal(tifffile.imread(out / f"s{i}_{cls}_mask.tif") > 0, ref[k] > 0)


def test_softmax_labels_into_ngff_05(data: dict, tmp_path: Path) -> None:
    """A softmax model's label image (mode-downsampled) in an NGFF 0.5 (zarr v3) store equals Predictor.predict."""
    d = data["2d"]
    model = random_model_dir(tmp_path / "softmax", ModelConfig(classes=("a", "b"), depth=2, filters=4, output="softmax"),
                             seed=2)
    config = PredictConfig(outputs=("labels", "masks"), tile=d["tile"], threads=1)
    src = d["input"]
    with Predictor(model, config) as p:
        ref = p.predict(src)
    out = tmp_path / "soft.ome.zarr"
    predict_blockwise(model, src, out, config, BlockwiseConfig(chunks=d["chunks"], block=(16, 256, 256), ngff_version="0.5"))
    assert json.loads((out / "zarr.json").read_text())["zarr_format"] == 3
    assert validate_ome_zarr(out) == ["labels", "masks"]
    labels = open_volume(out / "labels")
    np.testing.assert_array_equal(labels[:], ref.labels.values)
    assert set(np.unique(labels[:])) <= {0, 1, 2}
    assert open_volume(out / "labels", level=1).shape == (40, 150, 150)


def test_the_output_opens_with_the_reader_napari_uses(data: dict) -> None:
    """napari-ome-zarr reads a store through ome-zarr-py's Reader: the pyramid, axes and scale it sees."""
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    d = data["3d"]
    out = d["root"] / "napari3d.ome.zarr"
    predict_blockwise(d["model_dir"], d["input"], out, d["config"], _bw(d))
    location = parse_url(str(out / "masks"))
    assert location is not None
    image = next(n for n in reader.Reader(location)() if n.data)
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    assert len(image.data) == 2  # both pyramid levels, as napari's multiscale layer gets them
    full = np.asarray(image.data[0])
    assert full.shape == (1, 32, 128, 128) and set(np.unique(full)) <= {0, 255}
    np.testing.assert_array_equal(full[0] > 0, d["masks"][0] > 0)
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales[0][1:] == pytest.approx(list(VOXEL)) and scales[1][1:] == pytest.approx([0.04, 0.02, 0.02])
