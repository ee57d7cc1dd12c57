#!/usr/bin/env bash
# Replaces the rest of queue15.sh (stopped after its seed 3 started): seed 1 started from
# ssljax's weights still ended 1.37 above ssljax (46.42% against 45.05%), so the gap is not the
# initial weights there. Next the bisection: the reference from ssljax's weights AND on
# ssljax's inputs (--inputs_from_ssljax: ssljax's loader batches and on-device augmentation
# with the train step's keys), which differs from ssljax's run only in the train step's
# implementation (checked: losses of steps 1 and 2 equal ssljax's to 2e-6 relative). Then the
# remaining seeds of queue15 in between, as time allows.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
while pgrep -f "torch_reference.py.*--seed 3 .*--init_from_ssljax" > /dev/null; do sleep 20; done
log "end torch.simsiam_b64_lr1_4ep_jaxinit.s3 (queue15's last)"
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
INPUTS="--override data.root=$ROOT --override data.data_dir=$DD --init_from_ssljax --inputs_from_ssljax"
run() {  # name seed extra...
  local n=torch.simsiam_b64_lr1_4ep_$1.s$2; shift 2
  log "start $n"
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed ${n##*.s} \
    $COMMON4 "$@" --out $O/$n.json > $O/$n.log 2>&1
  log "end $n rc=$?"
}
run jaxinputs 1 $INPUTS
run jaxinit 0 --init_from_ssljax
run jaxinputs 3 $INPUTS
run jaxinit 2 --init_from_ssljax
# Appended after the queue ended (21:20): a rounding-only control. Seed 1 on ssljax's weights
# and inputs again, with one CPU thread instead of two (other reduction partitions in the
# convolutions), so the two reference runs differ in float32 rounding alone.
run jaxinputs_threads1 1 $INPUTS --threads 1  # (ran by hand, 21:20-21:45)
