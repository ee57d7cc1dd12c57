#!/usr/bin/env bash
# Session 2026-12-07 morning (2-core AMD EPYC with AVX-512 and avx512_bf16; the machine was new to this session): the PyTorch reference of the two
# batch-64 recipes at 1.25 epochs, 2 seeds each, after queue6.sh (one run at a time: two runs
# side by side on 2 cores slow each other several-fold).
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; O=/work/fid/out; mkdir -p $O
while pgrep -f queue6.sh > /dev/null; do sleep 20; done
COMMON="--override num_epochs=1.25 --override warmup_epochs=0.125 --override global_batch=64 --data_root $ROOT --device cpu --linear"
for s in 0 1; do
  echo "$(date +%T) start torch byol b64 s$s" >> $O/queue.log
  python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu --seed $s $COMMON \
    --out $O/torch.byol_b64.s$s.json > $O/torch.byol_b64.s$s.log 2>&1
  echo "$(date +%T) end torch byol b64 s$s rc=$?" >> $O/queue.log
  echo "$(date +%T) start torch simsiam b64 s$s" >> $O/queue.log
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed $s $COMMON \
    --override optimizer.base_lr=0.5 --override optimizer.weight_decay=1e-5 \
    --out $O/torch.simsiam_b64.s$s.json > $O/torch.simsiam_b64.s$s.log 2>&1
  echo "$(date +%T) end torch simsiam b64 s$s rc=$?" >> $O/queue.log
done
