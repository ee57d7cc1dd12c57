#!/usr/bin/env bash
# Session 2026-12-06 evening (2-core Intel Xeon, AVX-512): short-budget candidates for the two
# methods that gain < +10 kNN points in 1.25 epochs -- the same images seen, 4x the updates
# (batch 64, the learning rate scaled linearly by the configs' base_lr * batch / 256).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
# The image folder and its prepared copy that cifar_table.py made for the DINO row (queue2.sh):
# /work/fid holds other folders beside train/ and test/, which prepare refuses as splits.
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
# First run 3's ssljax seed 1 (queue2.sh's attempt found no prepared data on this machine).
LARS_S="--config.optimizer.lars_form=solo_learn --config.optimizer.eta=0.02 --config.optimizer.clip_lr=True"
echo "$(date +%T) start ssljax s1" >> $O/queue.log
python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_sololars.s1 \
  --config.data.root=$ROOT --config.data.data_dir=$DD --config.seed=1 \
  --config.num_epochs=1.25 --config.warmup_epochs=0.125 $LARS_S > $O/ssljax.byol_sololars.s1.log 2>&1
echo "$(date +%T) end ssljax s1 rc=$?" >> $O/queue.log
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125"
echo "$(date +%T) start byol b64" >> $O/queue.log
python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_b64.s0 $COMMON \
  --config.global_batch=64 > $O/ssljax.byol_b64.s0.log 2>&1
echo "$(date +%T) end byol b64 rc=$?" >> $O/queue.log
echo "$(date +%T) start simsiam b64 solo-learn rate" >> $O/queue.log
python -m ssljax.main --config=configs/simsiam.py:cifar10_cpu --workdir=$O/ssljax.simsiam_b64.s0 $COMMON \
  --config.global_batch=64 --config.optimizer.base_lr=0.5 --config.optimizer.weight_decay=1e-5 \
  > $O/ssljax.simsiam_b64.s0.log 2>&1
echo "$(date +%T) end simsiam b64 rc=$?" >> $O/queue.log
