#!/usr/bin/env bash
# Session 2026-12-08 (seventh; no GPU lent). Pin the rounding-only noise level for SimSiam
# lr 1.0, batch 64, 4 epochs, on both sides, with the commands of queue17.sh/queue18.sh:
# (a) the fourth reference rounding-only pair: seed 2 on ssljax's weights and inputs with
#     --threads 1 (queue17 dropped it to fit its session);
# (b) two more ssljax rounding-only controls: seeds 0 and 2 on 4 simulated CPU devices instead
#     of 2 (same weights, data order and augmentation keys; other reduction order).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
INPUTS="--override data.root=$ROOT --override data.data_dir=$DD --init_from_ssljax --inputs_from_ssljax"
n=torch.simsiam_b64_lr1_4ep_jaxinputs_threads1.s2
log "start $n"
python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed 2 \
  $COMMON4 $INPUTS --threads 1 --out $O/$n.json > $O/$n.log 2>&1
log "end $n rc=$?"
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.global_batch=64 --config.optimizer.base_lr=1.0 --config.optimizer.weight_decay=1e-5"
for s in 0 2; do
  n=ssljax.simsiam_b64_lr1_4ep_4dev.s$s
  log "start $n"
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m ssljax.main \
    --config=configs/simsiam.py:cifar10_cpu --workdir=$O/$n $COMMON --config.seed=$s > $O/$n.log 2>&1
  log "end $n rc=$?"
done
