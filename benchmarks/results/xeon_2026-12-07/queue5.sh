#!/usr/bin/env bash
# Session 2026-12-07 (2-core Intel Xeon): a short-budget candidate for DINO at 1.25 epochs
# (the 2-core budget of DINO's multi-crop step on this machine). From the digits preset, where
# the tiny ResNet's head collapsed to a uniform teacher (loss at ln K) without it: BatchNorm in
# the head's hidden layers (the official --use_bn_in_head), AdamW at 0.002 x batch / 256 with
# weight decay 0.04, teacher momentum 0.99; plus batch 64 (4x the updates) and 2 local crops
# instead of 6 (cheaper steps).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
while pgrep -f queue4.sh > /dev/null; do sleep 30; done
echo "$(date +%T) start dino short" >> $O/queue.log
python -m ssljax.main --config=configs/dino.py:cifar10_cpu --workdir=$O/ssljax.dino_short.s0 \
  --config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125 \
  --config.global_batch=64 --config.optimizer.name=adamw --config.optimizer.base_lr=0.002 \
  --config.optimizer.weight_decay=0.04 --config.heads.use_bn=True --config.tau_base=0.99 \
  --config.augment.num_local_views=2 > $O/ssljax.dino_short.s0.log 2>&1
echo "$(date +%T) end dino short rc=$?" >> $O/queue.log
