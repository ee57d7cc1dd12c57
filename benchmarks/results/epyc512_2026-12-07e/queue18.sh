#!/usr/bin/env bash
# Replaces the end of queue17.sh (stopped while its jaxinputs seed-2 run went on). After three
# seeds ssljax trailed the reference on its weights and inputs every time (-0.33, -0.60, -0.33;
# paired t -4.7, 2 df), and the 1-thread reference ended above the 2-thread one both times
# (+1.01, +0.19): is the 2-thread reference itself "low" against other rounding, and is ssljax?
# An ssljax-side rounding-only control: seed 1 again with 4 simulated CPU devices instead of 2
# (the batch and the BN/loss reductions split four ways: same weights, data order and
# augmentation keys -- tests/test_train.py::test_eight_devices_equal_one -- other rounding).
# It replaces queue17's last run (the 1-thread reference on seed 2) to fit the session.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
while pgrep -f "torch_reference.py.*--seed 2 .*--inputs_from_ssljax" > /dev/null; do sleep 20; done
log "end torch.simsiam_b64_lr1_4ep_jaxinputs.s2 (queue17's)"
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
INPUTS="--override data.root=$ROOT --override data.data_dir=$DD --init_from_ssljax --inputs_from_ssljax"
run() {  # name seed extra...
  local n=torch.simsiam_b64_lr1_4ep_$1.s$2; shift 2
  log "start $n"
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed ${n##*.s} \
    $COMMON4 "$@" --out $O/$n.json > $O/$n.log 2>&1
  log "end $n rc=$?"
}
run jaxinputs_threads1 0 $INPUTS --threads 1
COMMON="--config.data.root=$ROOT --config.data.data_dir=$DD --config.global_batch=64 --config.optimizer.base_lr=1.0 --config.optimizer.weight_decay=1e-5"
n=ssljax.simsiam_b64_lr1_4ep_4dev.s1
log "start $n"
XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m ssljax.main \
  --config=configs/simsiam.py:cifar10_cpu --workdir=$O/$n $COMMON --config.seed=1 > $O/$n.log 2>&1
log "end $n rc=$?"
