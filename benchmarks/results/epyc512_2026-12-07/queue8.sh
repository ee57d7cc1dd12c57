#!/usr/bin/env bash
# Session 2026-12-07 morning (2-core AMD EPYC with AVX-512): after queue7.sh, one run at a time:
# VICReg at its cifar10_cpu preset for 1.25 epochs (batch 256), the PyTorch reference and
# ssljax, seeds 0 and 1; then frozen-kernel baselines (every convolution kernel of the backbone
# held at its initialisation, BatchNorm, biases and heads trained) of the three compared
# recipes, seed 0; then Barlow Twins as VICReg.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
while pgrep -f queue7.sh > /dev/null; do sleep 20; done
SHORT="--config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125"
FROZEN="--config.optimizer.freeze=(('^backbone/.*kernel\$', 1e9),)"
pair() {  # method seed
  echo "$(date +%T) start torch $1 s$2" >> $O/queue.log
  python benchmarks/torch_reference.py --config configs/$1.py:cifar10_cpu --seed $2 \
    --override num_epochs=1.25 --override warmup_epochs=0.125 --data_root $ROOT --device cpu \
    --linear --out $O/torch.$1.s$2.json > $O/torch.$1.s$2.log 2>&1
  echo "$(date +%T) end torch $1 s$2 rc=$?" >> $O/queue.log
  echo "$(date +%T) start ssljax $1 s$2" >> $O/queue.log
  python -m ssljax.main --config=configs/$1.py:cifar10_cpu --workdir=$O/ssljax.$1.s$2 $SHORT \
    --config.seed=$2 > $O/ssljax.$1.s$2.log 2>&1
  echo "$(date +%T) end ssljax $1 s$2 rc=$?" >> $O/queue.log
}
frozen() {  # method name extra-overrides...
  local m=$1 name=$2; shift 2
  echo "$(date +%T) start frozen-kernel $name" >> $O/queue.log
  python -m ssljax.main --config=configs/$m.py:cifar10_cpu --workdir=$O/frozen.$name.s0 $SHORT \
    "$FROZEN" "$@" > $O/frozen.$name.s0.log 2>&1
  echo "$(date +%T) end frozen-kernel $name rc=$?" >> $O/queue.log
}
pair vicreg 0
pair vicreg 1
frozen byol byol_b64 --config.global_batch=64
frozen simsiam simsiam_b64 --config.global_batch=64 --config.optimizer.base_lr=0.5 \
  --config.optimizer.weight_decay=1e-5
frozen vicreg vicreg
pair barlow_twins 0
pair barlow_twins 1
