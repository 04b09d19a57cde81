#!/usr/bin/env bash
# GPU check in one command (issue 14, §5): on a machine with an NVIDIA GPU, windows/s of an
# exported model per batch size on ONNX Runtime's CUDA provider, through audioclust's own
# loader (I/O binding), and the provider that actually ran it. Without a GPU it says so and
# exits 0. Arguments go to bench/gpu_throughput.py (--model, --batches, --json, ...).
#
#   bench/gpu_check.sh [--model models/assets/default.onnx] [--batches 1,8,32,128,512]
#
# Python: $PYTHON if set; else .venv/bin/python when its ONNX Runtime has the CUDA
# provider (make setup EXTRAS=gpu,...); else runs/gpu-venv, made here with pip's
# onnxruntime-gpu and the CUDA 12 / cuDNN 9 wheels it names (nothing is installed system-wide).
set -euo pipefail
cd "$(dirname "$0")/.."

SMI=${NVIDIA_SMI:-nvidia-smi}
if ! command -v "$SMI" >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here ($SMI not found): nothing measured."
  exit 0
fi
if ! gpus=$("$SMI" -L 2>/dev/null) || ! grep -q '^GPU ' <<<"$gpus"; then
  echo "gpu_check: no NVIDIA GPU here ($SMI lists none): nothing measured."
  exit 0
fi
echo "gpu_check: $(head -n 1 <<<"$gpus")"

has_cuda() {
  "$1" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    >/dev/null 2>&1
}

mkdir -p runs
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && has_cuda .venv/bin/python; then
    PY=.venv/bin/python
  else
    VENV=runs/gpu-venv
    if ! { [ -x "$VENV/bin/python" ] && has_cuda "$VENV/bin/python"; }; then
      echo "gpu_check: installing onnxruntime-gpu into $VENV ..."
      if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "onnxruntime-gpu[cuda,cudnn]" numpy \
             && "$VENV/bin/pip" install -q --no-deps -e .; } >"$VENV.log" 2>&1; then
        echo "gpu_check: error: could not install onnxruntime-gpu into $VENV (see $VENV.log); install it" \
             "in place of onnxruntime and run again with PYTHON=that/python" >&2
        exit 1
      fi
    fi
    PY=$VENV/bin/python
  fi
fi
exec "$PY" bench/gpu_throughput.py --provider cuda "$@"
