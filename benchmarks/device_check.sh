#!/usr/bin/env bash
# The GPU checks of issue 20 (item 7) in one script, for a lent CUDA machine: the CUDA tests, the transform and
# message-passing benchmarks on the device, and the scaling grid there with its board table. Each step has its
# own time limit (the whole script stays under about 9 minutes) and writes as it goes, so a step cut short still
# leaves its output. At most 8 files land in $OUT (the device tool brings back no more).
#
# On the GPU machine (its image has torch and most dependencies; benchmarks/device_wheels.sh fetches the rest
# into .whl/ beforehand, here): run from the repository root with .whl carried:
#     bash benchmarks/device_check.sh
# A dry run on a CPU machine checks the plumbing in a minute: DEVICE=cpu INSTALL=0 bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
DEVICE=${DEVICE:-cuda}
INSTALL=${INSTALL:-1}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
S="$OUT/summary.txt"
step() { echo "== $(date +%T) $*" | tee -a "$S"; }

if [ "$DEVICE" = cuda ]; then
  SIZES=4096x1024,65536x256,65536x4096,1048576x64; VNS=65536; VB=1024; T_TEST=200; T_ENC=90; T_VAMP=90; T_GRID=200
else  # the dry run: small and quick
  SIZES=4096x64; VNS=4096; VB=32; T_TEST=120; T_ENC=60; T_VAMP=60; T_GRID=60
fi

step "install (INSTALL=$INSTALL)"
if [ "$INSTALL" = 1 ]; then
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >> "$S" 2>&1 || { step "FAILED: the carried wheels did not install"; exit 3; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$S" 2>&1 \
    || { step "FAILED: decoderbench did not install"; exit 3; }
fi

step "device"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY - <<'PY'
import torch, decoderbench
from decoderbench.model import _kernel, hadamard
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("decoderbench", decoderbench.__version__, "AVX2 kernel:", _kernel.KERNEL is not None, _kernel.why_not)
for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
    print(dev, "transform:", hadamard.describe_backend(dev, "float32", 65536))
PY
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt" >> "$S"

step "tests (CUDA ones; they skip without a device)"
timeout "$T_TEST" $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_hadamard.py \
  > "$OUT/tests.txt" 2>&1
echo "exit $?" >> "$OUT/tests.txt"; tail -3 "$OUT/tests.txt" >> "$S"

step "encode/decode/apply against the transforms, on $DEVICE"
timeout "$T_ENC" $PY benchmarks/encoder_cost.py --device "$DEVICE" --steady --rounds 20 --sizes "$SIZES" \
  > "$OUT/encoder_cost.txt" 2>&1
echo "exit $?" >> "$OUT/encoder_cost.txt"

step "one VAMP/AMP iteration against one apply, on $DEVICE"
timeout "$T_VAMP" $PY benchmarks/vamp_cost.py --device "$DEVICE" --ns "$VNS" --batch "$VB" --repeat 3 \
  --profile-ns 0 > "$OUT/vamp_cost.txt" 2>&1
echo "exit $?" >> "$OUT/vamp_cost.txt"; cat "$OUT/vamp_cost.txt" >> "$S"

step "the scaling grid on $DEVICE (as far as $T_GRID s take it; a rerun resumes)"
STORE=/tmp/results-scaling-$DEVICE
NS=""; [ "$DEVICE" = cpu ] && NS="--ns 1024,2048"
timeout "$T_GRID" $PY -m decoderbench run --grid scaling --device "$DEVICE" --out "$STORE" $NS \
  > "$OUT/scaling_run.txt" 2>&1
echo "exit $?" >> "$OUT/scaling_run.txt"; tail -4 "$OUT/scaling_run.txt" >> "$S"
$PY -m decoderbench leaderboard --grid scaling --results "$STORE" --out /tmp/board-scaling-$DEVICE --quiet \
  >> "$S" 2>&1 && cp /tmp/board-scaling-$DEVICE/scaling.md "$OUT/scaling.md"
step "done"
