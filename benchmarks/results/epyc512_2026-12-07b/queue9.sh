#!/usr/bin/env bash
# Session 2026-12-07 (second, same 2-core AMD EPYC with AVX-512), one run at a time:
# Barlow Twins at its cifar10_cpu preset for 1.25 epochs (batch 256) in the PyTorch reference
# and ssljax, seeds 0 and 1 (run 4's fourth method); its frozen-kernel baseline (seed 0); linear
# probes of the frozen-kernel checkpoints; the DINO short-budget candidate with the code after
# 98ada38, seeds 0 and 1; then the reference at the 4-epoch BYOL/SimSiam recipes (seed 0).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
SHORT="--config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125"
FROZEN="--config.optimizer.freeze=(('^backbone/.*kernel\$', 1e9),)"
log() { echo "$(date +%T) $*" >> $O/queue.log; }
pair() {  # method seed
  log "start torch $1 s$2"
  python benchmarks/torch_reference.py --config configs/$1.py:cifar10_cpu --seed $2 \
    --override num_epochs=1.25 --override warmup_epochs=0.125 --data_root $ROOT --device cpu \
    --linear --out $O/torch.$1.s$2.json > $O/torch.$1.s$2.log 2>&1
  log "end torch $1 s$2 rc=$?"
  log "start ssljax $1 s$2"
  python -m ssljax.main --config=configs/$1.py:cifar10_cpu --workdir=$O/ssljax.$1.s$2 $SHORT \
    --config.seed=$2 > $O/ssljax.$1.s$2.log 2>&1
  log "end ssljax $1 s$2 rc=$?"
}
linear() {  # workdir-name
  log "start linear $1"
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m ssljax.evaluate \
    --workdir=$O/$1 --protocol=linear > $O/linear.$1.log 2>&1
  log "end linear $1 rc=$?"
}
DINO="--config.global_batch=64 --config.optimizer.name=adamw --config.optimizer.base_lr=0.002 --config.optimizer.weight_decay=0.04 --config.heads.use_bn=True --config.tau_base=0.99 --config.augment.num_local_views=2"
dino() {  # seed
  log "start ssljax dino_candidate s$1"
  python -m ssljax.main --config=configs/dino.py:cifar10_cpu --workdir=$O/ssljax.dino_c.s$1 $SHORT \
    $DINO --config.seed=$1 > $O/ssljax.dino_c.s$1.log 2>&1
  log "end ssljax dino_candidate s$1 rc=$?"
}
pair barlow_twins 0
pair barlow_twins 1
linear ssljax.barlow_twins.s0
log "start frozen-kernel barlow_twins"
python -m ssljax.main --config=configs/barlow_twins.py:cifar10_cpu --workdir=$O/frozen.barlow_twins.s0 \
  $SHORT "$FROZEN" > $O/frozen.barlow_twins.s0.log 2>&1
log "end frozen-kernel barlow_twins rc=$?"
linear frozen.barlow_twins.s0
linear frozen.simsiam_b64.s0
linear frozen.vicreg.s0
dino 0
COMMON4="--override global_batch=64 --data_root $ROOT --device cpu --linear"
log "start torch byol_b64 4ep s0"
python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu --seed 0 $COMMON4 \
  --out $O/torch.byol_b64_4ep.s0.json > $O/torch.byol_b64_4ep.s0.log 2>&1
log "end torch byol_b64 4ep s0 rc=$?"
dino 1
log "start torch simsiam_b64 4ep s0"
python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed 0 $COMMON4 \
  --override optimizer.base_lr=0.5 --override optimizer.weight_decay=1e-5 \
  --out $O/torch.simsiam_b64_4ep.s0.json > $O/torch.simsiam_b64_4ep.s0.log 2>&1
log "end torch simsiam_b64 4ep s0 rc=$?"
