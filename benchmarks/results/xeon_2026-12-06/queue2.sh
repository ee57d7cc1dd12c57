#!/usr/bin/env bash
# Session 2026-12-06 evening (2-core Intel Xeon with AVX-512, not run 3's EPYC): run 3's second seed (BYOL, solo-learn LARS, 1.25 epochs, both
# sides strict float32 on the 2-core CPU), then DINO's cifar10_cpu row of the README's table.
# Run under `nice -n 19` so that test runs beside it keep the CPU.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid; DD=/work/fid/data; O=/work/fid/out; mkdir -p $O
LARS_S="--config.optimizer.lars_form=solo_learn --config.optimizer.eta=0.02 --config.optimizer.clip_lr=True"
LARS_T="--override optimizer.lars_form=solo_learn --override optimizer.eta=0.02 --override optimizer.clip_lr=True"
s=1
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
echo "$(date +%T) start dino row" >> $O/queue.log
python benchmarks/cifar_table.py --root /work/fid/table --rows dino \
  --override=--config.num_epochs=1.25 --override=--config.warmup_epochs=0.125 > $O/table.dino.log 2>&1
echo "$(date +%T) end dino row rc=$?" >> $O/queue.log
