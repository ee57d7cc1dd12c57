#!/usr/bin/env bash
# The GPU performance table in one command (about 8 minutes on one H200):
#   bash benchmarks/gpu.sh OUT
# ResNet-50 224 bf16 batch 256, BYOL / SimSiam / VICReg / Barlow Twins: ssljax's train step
# against the same step in PyTorch, eager and under torch.compile; ResNet-18 CIFAR float32
# batch 256 (BYOL) the same way; then `python -m ssljax.main --config=configs/byol.py:cifar10` at
# its defaults for E2E_EPOCHS epochs (images/s and input-wait share against the bare step).
# Needs jax[cuda], torch and the project's dependencies (missing wheels from .whl/, CIFAR-10
# from .gpudata/ or ../shared/data: see benchmarks/gpu_session.sh).
set -uo pipefail
OUT=${1:?usage: gpu.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
DEADLINE=${DEADLINE:-480} YS_TIMEOUT=${YS_TIMEOUT:-240} \
  bash "$here/gpu_session.sh" "$OUT" setup,yardstick
DEADLINE=${DEADLINE_R18:-150} YS_MODEL=resnet18_cifar YS_DTYPES=float32 YS_METHODS=byol \
  YS_COMPILE=${YS_COMPILE:-max-autotune-no-cudagraphs} YS_TIMEOUT=120 \
  bash "$here/gpu_session.sh" "$OUT/r18" yardstick
DEADLINE=${DEADLINE_E2E:-120} E2E_EPOCHS=${E2E_EPOCHS:-20} E2E_TIMEOUT=110 \
  bash "$here/gpu_session.sh" "$OUT/e2e" e2e
grep -hE "^ratio|img/s" "$OUT"/session.log "$OUT"/r18/session.log "$OUT"/e2e/session.log 2>/dev/null
