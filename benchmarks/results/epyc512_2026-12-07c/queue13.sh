#!/usr/bin/env bash
# Session of 2026-12-07 (third): the screen (queue12.sh, 1.25 epochs, seed 1) gave SimSiam
# batch 64 +5.9 at base lr 1.0 against +4.2 at 0.5, and +3.9 without blur. So the 4-epoch
# short-budget recipe is rerun at base lr 1.0 (peak 0.25): ssljax seeds 1 and 0, then the
# PyTorch reference with the same recipe, seeds 1 and 0.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
linear() {  # workdir-name
  log "start linear $1"
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m ssljax.evaluate \
    --workdir=$O/$1 --protocol=linear > $O/linear.$1.log 2>&1
  log "end linear $1 rc=$?"
}
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.global_batch=64 --config.optimizer.base_lr=1.0 --config.optimizer.weight_decay=1e-5"
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
for s in 1 0; do
  log "start ssljax simsiam_b64_lr1_4ep s$s"
  python -m ssljax.main --config=configs/simsiam.py:cifar10_cpu --workdir=$O/ssljax.simsiam_b64_lr1_4ep.s$s $COMMON \
    --config.seed=$s > $O/ssljax.simsiam_b64_lr1_4ep.s$s.log 2>&1
  log "end ssljax simsiam_b64_lr1_4ep s$s rc=$?"
  linear ssljax.simsiam_b64_lr1_4ep.s$s
done
for s in 1 0; do
  log "start torch simsiam_b64_lr1_4ep s$s"
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed $s $COMMON4 \
    --out $O/torch.simsiam_b64_lr1_4ep.s$s.json > $O/torch.simsiam_b64_lr1_4ep.s$s.log 2>&1
  log "end torch simsiam_b64_lr1_4ep s$s rc=$?"
done
