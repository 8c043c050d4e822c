#!/usr/bin/env bash
# The GPU figures of a session that is lent a device machine, in as few calls as the device time allows.
#
# The machine (see the `device` tool's KINDS.md) has Python 3.12 with CUDA PyTorch, ONNX, onnxruntime (CPU
# build), numpy, scipy, scikit-image, tifffile, pandas, h5py, matplotlib, but not zarr or jsonschema, which
# fiji_emseg imports to read TIFFs and check config.json; and it reaches neither PyPI nor ../shared/data.
# So, here first (PyPI and ../shared/data needed; everything lands in .gpu/, which git ignores):
#
#     bash benchmarks/gpu_session.sh prepare
#
# then one call of the device tool per part, carrying .gpu:
#
#     run(command="bash benchmarks/gpu_session.sh run speed", carry=[".gpu"], timeout_s=420)
#     run(command="bash benchmarks/gpu_session.sh run plan 3", carry=[".gpu"], timeout_s=540)
#
# Parts (each writes its log under $OUT, which comes back):
#   speed          seconds per training step per precision (train_speed.py --device cuda) and prediction
#                  speed per backend (predict_speed.py --device cuda, 64 slices of 2048x1536): ~4 min
#   plan MIN       the planner with a MIN-minute budget on vnc mito and membrane (accuracy_vnc.py --preset
#                  plan): about 2 x (MIN + 1) min
#   default CLASS  DeepSCEM's full 64 x 256 schedule on one vnc class (accuracy_vnc.py --preset default
#                  --no-limit), the baseline issue 13 compares a 10-minute plan with
# The durations are estimates: no part has run on a GPU yet. A session has 15 minutes of device time in all,
# machine starts included: 'speed' and 'plan 3' should fit; the issue's full comparison (10-minute plans and
# the default schedule on both classes) does not fit one session.
# DRY_RUN=1 runs each part's code here on the CPU at a tiny size (plumbing only, no figures):
#     PYVER=3.11 GPU_DIR=/tmp/gpu bash benchmarks/gpu_session.sh prepare
#     DRY_RUN=1 GPU_DIR=/tmp/gpu bash benchmarks/gpu_session.sh run plan 0.3
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        jsonschema==4.26.0 referencing==0.37.0 jsonschema-specifications==2025.9.1 rpds-py==0.30.0)
SHARED=${SHARED_DATA:-../shared/data}

prepare() {
    local py=${PYVER:-3.12} dest=${GPU_DIR:-.gpu}
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    mkdir -p "$dest/whl" "$dest/data/vnc_sstem" "$dest/data/isbi2012"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest/whl" "${WHEELS[@]}"
    for f in image.tif mito.tif membrane.tif; do cp "$SHARED/vnc_sstem/$f" "$dest/data/vnc_sstem/"; done
    for f in image.tif membrane.tif; do cp "$SHARED/isbi2012/$f" "$dest/data/isbi2012/"; done
    du -sh "$dest"
    echo "ready: carry [\"$dest\"] (at most 64 MiB travel)"
}

run() {
    local part=${1:?"run needs a part: speed, plan MIN or default CLASS"}
    local out=${OUT:-/tmp/gpu_out} dest=${GPU_DIR:-.gpu}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dest"/whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
    { nvidia-smi -L || true; python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"; python3 -c "import zarr, jsonschema; print('zarr', zarr.__version__, zarr.__file__); print('jsonschema', jsonschema.__file__)"; } 2>&1 | tee "$out/env.txt"
    local device=cuda train_speed=(--device cuda --steps 10) predict_speed=(--device cuda --gpu-slices 64)
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        device=cpu train_speed=(--device cpu --quick) predict_speed=(--device cuda --gpu-dry-run --quick)
    fi
    case "$part" in
        speed)  # both run even if the first fails; the part fails if either did
            local rc=0
            python3 benchmarks/train_speed.py "${train_speed[@]}" 2>&1 | tee "$out/train_speed.txt" || rc=1
            python3 benchmarks/predict_speed.py "${predict_speed[@]}" 2>&1 | tee "$out/predict_speed.txt" || rc=1
            return $rc ;;
        plan)
            local minutes=${2:?"plan needs the minutes per class"}
            python3 benchmarks/accuracy_vnc.py --data "$dest/data/vnc_sstem" --device "$device" --preset plan \
                --minutes "mito=$minutes" "membrane=$minutes" -q 2>&1 | tee "$out/accuracy_plan_${minutes}min.txt" ;;
        default)
            local cls=${2:?"default needs a class: mito or membrane"}
            python3 benchmarks/accuracy_vnc.py --data "$dest/data/vnc_sstem" --device "$device" --preset default \
                --no-limit --classes "$cls" -q 2>&1 | tee "$out/accuracy_default_$cls.txt" ;;
        *) echo "unknown part '$part'; use speed, plan MIN or default CLASS" >&2; exit 2 ;;
    esac
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_session.sh prepare | run speed | run plan MIN | run default CLASS" >&2; exit 2 ;;
esac
