#!/usr/bin/env bash
# CPU equal-budget runs, BYOL with solo-learn's LARS (the cifar10 preset's optimizer) at the cifar10_cpu budget.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid; DD=/work/fid/data; O=/work/fid/out; mkdir -p $O
LARS_S="--config.optimizer.lars_form=solo_learn --config.optimizer.eta=0.02 --config.optimizer.clip_lr=True"
LARS_T="--override optimizer.lars_form=solo_learn --override optimizer.eta=0.02 --override optimizer.clip_lr=True"
for s in 0 1; do
  echo "$(date +%T) start torch s$s" >> $O/queue.log
  python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu --seed $s \
    --override num_epochs=1.25 --override warmup_epochs=0.125 $LARS_T \
    --data_root $ROOT --device cpu --out $O/torch.byol_sololars.s$s.json > $O/torch.byol_sololars.s$s.log 2>&1
  echo "$(date +%T) end torch s$s rc=$?" >> $O/queue.log
  echo "$(date +%T) start ssljax s$s" >> $O/queue.log
  python -m ssljax.main --config=configs/byol.py:cifar10_cpu --workdir=$O/ssljax.byol_sololars.s$s \
    --config.data.root=$ROOT --config.data.data_dir=$DD --config.seed=$s \
    --config.num_epochs=1.25 --config.warmup_epochs=0.125 $LARS_S > $O/ssljax.byol_sololars.s$s.log 2>&1
  echo "$(date +%T) end ssljax s$s rc=$?" >> $O/queue.log
done
