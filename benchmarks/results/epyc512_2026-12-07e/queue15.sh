#!/usr/bin/env bash
# Session of 2026-12-07 (fifth; no GPU lent). SimSiam's short-budget recipe (base lr 1.0,
# batch 64, wd 1e-5, 4 epochs): ssljax - reference = -1.00 kNN on 4 seeds, of which -0.55 at
# initialisation (different weight draws). The reference again, each seed started from the
# weights ssljax drew for that seed (--init_from_ssljax), its data order and augmentation draws
# unchanged (the flag loads over torch's draw): against the reference's own-init run of the
# same seed this isolates the initial weights; against ssljax's run of the seed, the random
# streams of data order and augmentation. Seeds with the largest gaps first.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
for s in 1 3 0 2; do
  n=torch.simsiam_b64_lr1_4ep_jaxinit.s$s
  log "start $n"
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed $s $COMMON4 \
    --init_from_ssljax --out $O/$n.json > $O/$n.log 2>&1
  log "end $n rc=$?"
done
