#!/usr/bin/env bash
# Session 2026-12-07 (2-core Intel Xeon, AVX-512): the short-budget candidate at the 2-core budget
# of the preset (4 epochs): batch 64 (4x the updates of batch 256), the learning rate scaled by
# the configs' base_lr x batch / 256, the warm-up the preset's tenth of the run.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.global_batch=64"
echo "$(date +%T) start byol b64 4ep" >> $O/queue.log
python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_b64_4ep.s0 $COMMON \
  > $O/ssljax.byol_b64_4ep.s0.log 2>&1
echo "$(date +%T) end byol b64 4ep rc=$?" >> $O/queue.log
echo "$(date +%T) start simsiam b64 4ep solo-learn rate" >> $O/queue.log
python -m ssljax.main --config=configs/simsiam.py:cifar10_cpu --workdir=$O/ssljax.simsiam_b64_4ep.s0 $COMMON \
  --config.optimizer.base_lr=0.5 --config.optimizer.weight_decay=1e-5 \
  > $O/ssljax.simsiam_b64_4ep.s0.log 2>&1
echo "$(date +%T) end simsiam b64 4ep rc=$?" >> $O/queue.log
