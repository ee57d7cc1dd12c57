#!/usr/bin/env bash
# One prepared accelerator session, in phases, each bounded in time, every result under OUT.
#
#   bash benchmarks/gpu_session.sh OUT [PHASES]        PHASES: setup,fidelity,e2e,step,input
#
# Made for a GPU host that has jax[cuda], flax, optax, orbax and torch but no package index and
# no ../shared: missing wheels are taken from .whl/ and CIFAR-10 from .gpudata/ (both ignored by
# git, both inside the repository so that they travel with it). It also runs on a CPU host as a
# dry run (DRY=1 shrinks every phase to a few steps).
#
# Before a device call, here: `python benchmarks/gpu_carry.py` fills .whl/ (the 14 packages of
# ssljax's runtime closure that the host's image lacks, as CPython 3.12 wheels) and .gpudata/
# (CIFAR-10), about 29 MiB, and prints the carry list. Issue 23's BYOL run, one call with
# carry [".whl", ".gpudata"] and timeout_s 600:
#   DEADLINE=570 E2E_EPOCHS=auto E2E_TIMEOUT=600 bash benchmarks/gpu_session.sh $OUT/s setup,e2e
# (setup takes ~30 s; e2e trains as many epochs as fit, then the kNN; see the e2e phase).
#
# Phases, in this order (the most important first, each bounded by what is left of DEADLINE):
#   setup     install .whl/*.whl into /tmp/site, unpack CIFAR-10, `prepare` it (image_folder).
#   fidelity  the equal-budget runs: each method's cifar10_cpu preset at FID_EPOCHS epochs in
#             ssljax and in the PyTorch reference (benchmarks/torch_reference.py), FID_RUNS (method:seed),
#             FID_PARALLEL processes at a time on the one GPU; plus variant rows from FID_VARIANTS
#             (seeds FID_SEEDS).
#   e2e       `python -m ssljax.main --config=configs/byol.py:cifar10` at its defaults (loader
#             workers automatic) for E2E_EPOCHS epochs: images/s, input-wait share, kNN at the end.
#   step      the bare jitted train step, BYOL ResNet-18 CIFAR, batch 256, float32 and bfloat16
#             (benchmarks/step.py): the images/s that the end-to-end run is compared with.
#   input     the loader alone (benchmarks/input.py): images/s per worker count and per core.
#   yardstick (not in the default list) ssljax's step against PyTorch eager and torch.compile
#             (benchmarks/torch_yardstick.py), ResNet-50 bf16 batch 256 by default; benchmarks/gpu.sh.
set -uo pipefail
OUT=${1:?usage: gpu_session.sh OUT [PHASES]}
PHASES=${2:-setup,fidelity,e2e,step,input}
mkdir -p "$OUT"
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$REPO"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DRY=${DRY:-0}
WORK=${WORK:-/tmp/ssljax_gpu}
DATA_DIR=$WORK/data
LOG=$OUT/session.log
mkdir -p "$WORK"
say() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
T0=$(date +%s)
has() { [[ ",$PHASES," == *",$1,"* ]]; }
# Every phase ends by DEADLINE seconds after the start (minus what the archive needs), so a
# command limit never cuts the results: budget NAME DEFAULT -> min(DEFAULT, time left).
DEADLINE=${DEADLINE:-560}
budget() {
  local left=$(( DEADLINE - ($(date +%s) - T0) - 15 ))
  local want=$1
  (( left < want )) && want=$left
  (( want < 1 )) && want=1
  echo "$want"
}

# The project's dependencies that the host lacks come from .whl/ (installed once into /tmp/site).
if $PY -c "import grain, tensorflow_datasets, ml_collections" 2>/dev/null; then
  export PYTHONPATH=$REPO
else
  if [ ! -d /tmp/site ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site:$REPO
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee -a "$LOG"
$PY -c "import jax, flax, optax, orbax.checkpoint, grain, tensorflow_datasets, torch; \
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__)" \
  2>&1 | tail -1 | tee -a "$LOG"

# --- setup: CIFAR-10 unpacked and prepared. --------------------------------------------------------
ROOT_FILE=$WORK/cifar_root
if has setup; then
  say "unpacking CIFAR-10"
  rm -rf "$WORK/cifar"; mkdir -p "$WORK/cifar"
  archive=.gpudata/cifar10-jpg.tar.gz
  [ -f "$archive" ] || archive=../shared/data/cifar10-jpg.tar.gz
  tar -xzf "$archive" -C "$WORK/cifar" || { say "no CIFAR-10 archive"; exit 1; }
  dirname "$(find "$WORK/cifar" -maxdepth 3 -type d -name train | head -1)" >"$ROOT_FILE"
  say "preparing $(cat "$ROOT_FILE") into $DATA_DIR"
  $PY -m ssljax.data.prepare --dataset=image_folder --root="$(cat "$ROOT_FILE")" \
    --data_dir="$DATA_DIR" --num_workers="$(nproc)" >>"$LOG" 2>&1 || { say "prepare failed"; exit 1; }
  say "prepared"
fi
ROOT=$(cat "$ROOT_FILE" 2>/dev/null || echo "")
DATA_FLAGS=(--config.data.root="$ROOT" --config.data.data_dir="$DATA_DIR")

# --- fidelity: equal budget, ssljax and the PyTorch reference, several at a time. -------------------
if has fidelity; then
  runs=${FID_RUNS:-byol:0,simsiam:0,byol:1,simsiam:1,vicreg:0,barlow_twins:0,vicreg:1,barlow_twins:1}
  seeds=${FID_SEEDS:-0}  # of the variant rows
  epochs=${FID_EPOCHS:-1.25}
  jobs=$WORK/fidelity_jobs.txt; : >"$jobs"
  mkdir -p "$WORK/fid"
  small=(); tsmall=()
  if [ "$DRY" = 1 ]; then
    small=(--config.num_steps=2 --config.knn.at_end=False --config.knn.at_start=False)
    tsmall=(--override num_steps=2 --knn_subset 512 --calib_batches 2)
  fi
  # Runs in the order given (the most wanted first: the queue may be cut by the deadline).
  for run in ${runs//,/ }; do
    m=${run%%:*}; s=${run##*:}
    {
      name=ssljax.$m.s$s
      echo "$PY -m ssljax.main --config=configs/$m.py:cifar10_cpu --workdir=$WORK/fid/$name \
${DATA_FLAGS[*]} --config.seed=$s --config.num_epochs=$epochs --config.warmup_epochs=$(
        $PY -c "print($epochs/10)") --config.data.num_workers=${FID_WORKERS:-3} ${small[*]} \
>$WORK/fid/$name.log 2>&1" >>"$jobs"
      name=torch.$m.s$s
      if [ -f benchmarks/torch_reference.py ]; then
        echo "$PY benchmarks/torch_reference.py --config configs/$m.py:cifar10_cpu --seed $s \
--override num_epochs=$epochs --override warmup_epochs=$($PY -c "print($epochs/10)") \
--data_root $ROOT --num_workers ${FID_WORKERS:-3} --device auto --out $WORK/fid/$name.json \
${tsmall[*]} >$WORK/fid/$name.log 2>&1" >>"$jobs"
      fi
    }
  done
  # Variant rows: lines "NAME|CONFIG|OVERRIDES" (overrides as --config.x=y ...), seeds as above.
  if [ -n "${FID_VARIANTS:-}" ] && [ -f "$FID_VARIANTS" ]; then
    while IFS='|' read -r vname vconfig voverrides; do
      [ -z "$vname" ] && continue
      for s in ${seeds//,/ }; do
        echo "$PY -m ssljax.main --config=$vconfig --workdir=$WORK/fid/variant.$vname.s$s \
${DATA_FLAGS[*]} --config.seed=$s --config.num_epochs=$epochs --config.warmup_epochs=$(
          $PY -c "print($epochs/10)") --config.data.num_workers=${FID_WORKERS:-3} $voverrides \
${small[*]} >$WORK/fid/variant.$vname.s$s.log 2>&1" >>"$jobs"
      done
    done <"$FID_VARIANTS"
  fi
  say "fidelity: $(wc -l <"$jobs") jobs, ${FID_PARALLEL:-4} at a time"
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  # Each job bounded; the whole phase bounded by FID_TIMEOUT.
  timeout "$(budget "${FID_TIMEOUT:-300}")" xargs -P "${FID_PARALLEL:-4}" -I{} \
    timeout "${FID_JOB_TIMEOUT:-280}" bash -c {} <"$jobs"
  say "fidelity ended with status $?"
  $PY benchmarks/collect_fidelity.py "$WORK/fid" --out "$OUT/fidelity.json" | tee -a "$LOG"
fi

# --- e2e: the preset's job at its defaults. ------------------------------------------------------------
# E2E_EPOCHS=auto (issue 23's "as many epochs as fit"): the epochs that fit in the time left, at
# E2E_RATE images/s (default: the H200's measured 12,700 for the float32 preset, 9,000 on another
# GPU), less E2E_RESERVE seconds (start-up and compilation) and E2E_KNN_S seconds kept for a kNN
# on a checkpoint; at most E2E_MAX_EPOCHS. If the limit cuts the run anyway it gets SIGTERM,
# checkpoints (ssljax.preemption) and exits; the kNN is then measured on that checkpoint with
# `python -m ssljax.evaluate --protocol=knn` in the time kept: a figure comes back either way,
# with the step it reached. E2E_EXTRA: more flags (e.g. --config.model.dtype=bfloat16).
if has e2e; then
  epochs=${E2E_EPOCHS:-40}; extra=()
  [ "$DRY" = 1 ] && extra=(--config.num_steps=3 --config.knn.at_end=False)
  limit=$(budget "${E2E_TIMEOUT:-300}")
  if [ "$epochs" = auto ]; then
    limit=$(( limit - ${E2E_KNN_S:-60} )); (( limit < 1 )) && limit=1
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    default_rate=9000; [[ "$gpu" == *H200* ]] && default_rate=12700
    epochs=$($PY -c "print(max(1, min(${E2E_MAX_EPOCHS:-200}, \
int(($limit - ${E2E_RESERVE:-45}) * ${E2E_RATE:-$default_rate} / 50000))))")
    say "e2e: $epochs epochs fit in ${limit}s at ${E2E_RATE:-$default_rate} img/s (${gpu:-no GPU})"
  fi
  warmup=${E2E_WARMUP:-$($PY -c "print(min(10.0, $epochs / 10))")}
  say "e2e: byol cifar10 at its defaults, $epochs epochs (warm-up $warmup) ${E2E_EXTRA:-}"
  rm -rf "$WORK/e2e_byol"
  # SIGTERM first (the run checkpoints and exits 0), SIGKILL 30 s later.
  timeout -s TERM -k 30 "$limit" $PY -m ssljax.main --config=configs/byol.py:cifar10 \
    --workdir="$WORK/e2e_byol" "${DATA_FLAGS[@]}" --config.num_epochs="$epochs" \
    --config.warmup_epochs="$warmup" --config.knn.every_epochs=0 ${E2E_EXTRA:-} "${extra[@]}" \
    >"$OUT/e2e_byol.log" 2>&1
  say "e2e ended with status $?"
  cp "$WORK/e2e_byol/metrics.jsonl" "$OUT/e2e_metrics.jsonl" 2>/dev/null
  cp "$WORK/e2e_byol/summary.json" "$OUT/e2e_summary.json" 2>/dev/null
  if ! grep -q '"knn_top1"' "$OUT/e2e_summary.json" 2>/dev/null && [ "$DRY" != 1 ] \
    && [ -d "$WORK/e2e_byol/checkpoints" ]; then
    say "e2e: no kNN at the end (cut by the limit); kNN on its last checkpoint"
    timeout "$(budget 300)" $PY -m ssljax.evaluate --workdir="$WORK/e2e_byol" --protocol=knn \
      >"$OUT/e2e_knn.log" 2>&1
    say "e2e kNN ended with status $?"
    cp "$WORK/e2e_byol/eval_knn.json" "$OUT/e2e_eval_knn.json" 2>/dev/null
    $PY -c "import json; d = json.load(open('$OUT/e2e_eval_knn.json')); \
print(f\"e2e kNN top-1 (k=200) at step {d['step']}: {100 * d['knn_top1_k200']:.2f}%\")" \
      2>/dev/null | tee -a "$LOG"
  fi
  grep -E "img/s|kNN|Finished|Preempt" "$OUT/e2e_byol.log" | tail -4
fi

# --- step: the bare train step (what the end-to-end run should reach). ------------------------------
if has step; then
  steps=20 step_model=resnet18_cifar step_batch=256
  # A CPU dry run: the smallest network at batch 16 (ResNet-18 at batch 256 is ~20 s a step on
  # 2 cores, past the phase's budget); the same script and flags otherwise.
  [ "$DRY" = 1 ] && steps=2 step_model=resnet_tiny step_batch=16
  say "bare step: BYOL $step_model batch $step_batch, float32 and bfloat16"
  timeout "$(budget "${STEP_TIMEOUT:-150}")" $PY benchmarks/step.py --methods byol --models $step_model \
    --batch $step_batch --dtypes float32,bfloat16 --devices 1 --steps $steps --warmup 3 --out "$OUT/step.json" \
    >>"$LOG" 2>&1 || say "step phase ended with status $?"
  grep -E "^ *byol" "$LOG" | tail -2
fi

# --- yardstick: ssljax's step against PyTorch eager and torch.compile, side by side. ---------------
if has yardstick; then
  if [ "$DRY" = 1 ]; then  # a CPU dry run: the smallest network, two steps, no torch.compile
    YS_MODEL=resnet_tiny YS_BATCH=8 YS_METHODS=byol YS_STEPS=2 YS_COMPILE=""
  fi
  say "yardstick: ${YS_MODEL:-resnet50} ${YS_DTYPES:-bfloat16} batch ${YS_BATCH:-256}"
  timeout "$(budget "${YS_TIMEOUT:-330}")" $PY benchmarks/torch_yardstick.py \
    --model "${YS_MODEL:-resnet50}" --batch "${YS_BATCH:-256}" \
    --methods "${YS_METHODS:-byol,simsiam,vicreg,barlow_twins}" --dtypes "${YS_DTYPES:-bfloat16}" \
    --repeats 1 --steps "${YS_STEPS:-10}" --warmup 3 --torch-settings 1/default/channels_last \
    --torch-compile "${YS_COMPILE-max-autotune-no-cudagraphs}" --jax-devices 1 \
    --out "$OUT/yardstick_${YS_MODEL:-resnet50}.json" >>"$LOG" 2>&1
  say "yardstick ended with status $?"
  grep -E "^ratio" "$LOG" | tail -8
fi

# --- input: the loader alone, CIFAR-10 and ImageNet-like JPEGs, per worker count. -----------------
if has input; then
  say "input: loader images/s per worker count"
  archive=.gpudata/cifar10-jpg.tar.gz
  [ -f "$archive" ] || archive=../shared/data/cifar10-jpg.tar.gz
  timeout "$(budget "${INPUT_TIMEOUT:-120}")" $PY benchmarks/input.py --archive "$archive" \
    --workers "0,1,4,$(( $(nproc) - 1 ))" --seconds "${INPUT_SECONDS:-2}" \
    --n_large "${INPUT_N_LARGE:-1000}" --out "$OUT/input.json" >>"$LOG" 2>&1
  say "input ended with status $?"
fi

# Logs of every run, in one archive (the transfer takes few files).
tar -czf "$OUT/logs.tgz" --exclude=checkpoints -C "$WORK" \
  $(cd "$WORK" && ls -d fid e2e_byol fidelity_jobs.txt 2>/dev/null) 2>/dev/null
say "done"
