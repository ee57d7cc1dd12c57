#!/usr/bin/env bash
# Takes over from queue9.sh (killed while its Barlow Twins frozen-kernel run trained, which
# went on) so that the initialisation-gap draws run before the long runs; one run at a time:
# linear probes of the frozen-kernel checkpoints and of ssljax's Barlow Twins seed 1; the
# initial networks of seeds 0-5 on both sides, BN-calibrated kNN measured by the reference's code
# (../epyc512_2026-12-07/init_gap.py --seeds); the DINO short-budget candidate with the code
# after 98ada38, seeds 0 and 1; the reference at the 4-epoch BYOL/SimSiam recipes (seed 0).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
SHORT="--config.data.root=$ROOT --config.data.data_dir=$DD --config.num_epochs=1.25 --config.warmup_epochs=0.125"
log() { echo "$(date +%T) $*" >> $O/queue.log; }
while pgrep -f "workdir=$O/frozen.barlow_twins.s0" > /dev/null; do sleep 20; done
log "end frozen-kernel barlow_twins (queue10 saw it end)"
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
linear frozen.barlow_twins.s0
linear ssljax.barlow_twins.s1
linear frozen.simsiam_b64.s0
linear frozen.vicreg.s0
log "start init_gap seeds 0-5"
python benchmarks/results/epyc512_2026-12-07/init_gap.py --knn --seeds=0,1,2,3,4,5 > $O/init_gap_seeds.txt 2>&1
log "end init_gap rc=$?"
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
