#!/usr/bin/env bash
# Session of 2026-12-07 (second): one run at a time. Linear probes of the DINO candidate
# (post-98ada38, seeds 0 and 1, trained by queue10.sh); second seeds of the 4-epoch batch-64
# recipes on both sides (ssljax seed 0 ran on the Xeon, queue4.sh; the reference's seed 0 in
# queue10.sh): BYOL first, then SimSiam.
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
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.global_batch=64"
COMMON4="--override global_batch=64 --data_root $ROOT --device cpu --linear"
linear ssljax.dino_c.s0
linear ssljax.dino_c.s1
log "start ssljax byol_b64 4ep s1"
python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_b64_4ep.s1 $COMMON \
  --config.seed=1 > $O/ssljax.byol_b64_4ep.s1.log 2>&1
log "end ssljax byol_b64 4ep s1 rc=$?"
linear ssljax.byol_b64_4ep.s1
log "start torch byol_b64 4ep s1"
python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu --seed 1 $COMMON4 \
  --out $O/torch.byol_b64_4ep.s1.json > $O/torch.byol_b64_4ep.s1.log 2>&1
log "end torch byol_b64 4ep s1 rc=$?"
log "start ssljax simsiam_b64 4ep s1"
python -m ssljax.main --config=configs/simsiam.py:cifar10_cpu --workdir=$O/ssljax.simsiam_b64_4ep.s1 $COMMON \
  --config.optimizer.base_lr=0.5 --config.optimizer.weight_decay=1e-5 --config.seed=1 \
  > $O/ssljax.simsiam_b64_4ep.s1.log 2>&1
log "end ssljax simsiam_b64 4ep s1 rc=$?"
linear ssljax.simsiam_b64_4ep.s1
log "start torch simsiam_b64 4ep s1"
python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed 1 $COMMON4 \
  --override optimizer.base_lr=0.5 --override optimizer.weight_decay=1e-5 \
  --out $O/torch.simsiam_b64_4ep.s1.json > $O/torch.simsiam_b64_4ep.s1.log 2>&1
log "end torch simsiam_b64 4ep s1 rc=$?"
