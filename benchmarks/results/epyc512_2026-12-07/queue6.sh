#!/usr/bin/env bash
# Session 2026-12-07 morning (2-core AMD EPYC with AVX-512 and avx512_bf16; the machine was new to this session): second seeds of the batch-64 runs at
# 1.25 epochs (the same images as run 3, 4x the updates), for the side-by-side with the
# PyTorch reference at the same budget.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125 --config.global_batch=64"
echo "$(date +%T) start ssljax byol b64 s1" >> $O/queue.log
python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_b64.s1 $COMMON \
  --config.seed=1 > $O/ssljax.byol_b64.s1.log 2>&1
echo "$(date +%T) end ssljax byol b64 s1 rc=$?" >> $O/queue.log
echo "$(date +%T) start ssljax simsiam b64 s1" >> $O/queue.log
python -m ssljax.main --config=configs/simsiam.py:cifar10_cpu --workdir=$O/ssljax.simsiam_b64.s1 $COMMON \
  --config.seed=1 --config.optimizer.base_lr=0.5 --config.optimizer.weight_decay=1e-5 \
  > $O/ssljax.simsiam_b64.s1.log 2>&1
echo "$(date +%T) end ssljax simsiam b64 s1 rc=$?" >> $O/queue.log
