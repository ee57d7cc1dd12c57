#!/usr/bin/env bash
# Session 2026-12-07 (sixth). More pairs for the SimSiam lr 1.0 question, with the same commands
# as queue16.sh: (a) rounding-only controls (the reference on ssljax's weights and inputs with
# --threads 1 against the same with 2 threads) on more seeds, to measure how far float32
# rounding alone moves the end point; (b) the reference on ssljax's weights and inputs on
# seeds 0 and 2 too, so that ssljax - reference(same weights, same inputs) has 4 seeds.
cd /work/main && . .venv/bin/activate
export PYTHONUNBUFFERED=1
ROOT=/work/fid/table/cifar10; DD=/work/fid/table/tfds; O=/work/fid/out; mkdir -p $O
log() { echo "$(date +%T) $*" >> $O/queue.log; }
COMMON4="--override global_batch=64 --override optimizer.base_lr=1.0 --override optimizer.weight_decay=1e-5 --data_root $ROOT --device cpu --linear"
INPUTS="--override data.root=$ROOT --override data.data_dir=$DD --init_from_ssljax --inputs_from_ssljax"
run() {  # name seed extra...
  local n=torch.simsiam_b64_lr1_4ep_$1.s$2; shift 2
  log "start $n"
  python benchmarks/torch_reference.py --config configs/simsiam.py:cifar10_cpu --seed ${n##*.s} \
    $COMMON4 "$@" --out $O/$n.json > $O/$n.log 2>&1
  log "end $n rc=$?"
}
run jaxinputs_threads1 3 $INPUTS --threads 1
run jaxinputs 0 $INPUTS
run jaxinputs 2 $INPUTS
run jaxinputs_threads1 0 $INPUTS --threads 1
run jaxinputs_threads1 2 $INPUTS --threads 1
