#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: install ssljax on every worker, then run on all of them.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]
#
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/byol.py:imagenet gs://my-bucket/byol_r50 \
#       --config.data.data_dir=gs://my-bucket/tensorflow_datasets
#
# Steps, each safe to repeat (re-running the same command resumes the run from its newest
# checkpoint):
#   1. the committed tree of this repository (git archive HEAD) is copied to every worker;
#   2. on every worker (gcloud compute tpus tpu-vm ssh --worker=all): a venv in ~/ssljax-venv,
#      jax[tpu] and ssljax installed into it -- skipped when this commit is installed already;
#      every gs:// bucket named in WORKDIR or the flags is mounted with gcsfuse at
#      /gcs/<bucket> (all workers must see one workdir: orbax writes checkpoints from every
#      process);
#   3. python -m ssljax.main on every worker at once. JAX detects the pod itself (worker id,
#      coordinator = worker 0), so no distributed flags are needed.
# gs://bucket/path arguments are rewritten to /gcs/bucket/path for ssljax.
#
# Environment:
#   PROJECT       gcloud project (default: gcloud's configured one)
#   JAX_VERSION   jax[tpu] version to install (default 0.10.2, the version ssljax is tested with)
#   DETACH=1      start training in the background (nohup; log in ~/ssljax-train.log on each
#                 worker) and return; follow it with
#                 gcloud compute tpus tpu-vm ssh TPU --zone ZONE --worker=0 \
#                     --command 'tail -f ~/ssljax-train.log'
#   SETUP_ONLY=1  install and mount, do not train
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
[[ $# -ge 4 ]] || usage
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
jax_version=${JAX_VERSION:-0.10.2}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gcloud_tpu=(gcloud compute tpus tpu-vm)
common=(--zone="$zone" --worker=all)
if [[ -n ${PROJECT:-} ]]; then common+=(--project="$PROJECT"); fi

if [[ $workdir != gs://* ]]; then
  echo "WORKDIR=$workdir must be a gs:// path: every worker writes checkpoints to one place." >&2
  exit 2
fi

# ---- 1. Code --------------------------------------------------------------------------------
commit=$(git -C "$repo" rev-parse --short=12 HEAD)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
  echo "Note: uncommitted changes are not deployed; the workers get commit $commit." >&2
fi
archive=$(mktemp -d)/ssljax-$commit.tar.gz
git -C "$repo" archive --format=tar.gz --prefix=ssljax/ -o "$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "$tpu:ssljax-$commit.tar.gz" "${common[@]}"

# ---- 2. Environment on every worker ---------------------------------------------------------
# Buckets named anywhere in the arguments are mounted, and their paths rewritten.
buckets=()
rewritten=()
for arg in "$workdir" "$@"; do
  while [[ $arg =~ gs://([a-z0-9][-_.a-z0-9]*) ]]; do
    bucket=${BASH_REMATCH[1]}
    [[ " ${buckets[*]} " == *" $bucket "* ]] || buckets+=("$bucket")
    arg=${arg/gs:\/\/$bucket//gcs/$bucket}
  done
  rewritten+=("$arg")
done
workdir=${rewritten[0]}
flags=("${rewritten[@]:1}")

setup=$(
  cat <<EOF
set -euo pipefail
if [[ ! -f ~/ssljax-venv/.installed-$commit ]]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
  fi
  [[ -x ~/ssljax-venv/bin/python ]] || python3 -m venv ~/ssljax-venv
  rm -rf ~/ssljax && tar -xzf ~/ssljax-$commit.tar.gz -C ~
  ~/ssljax-venv/bin/pip install --quiet --upgrade pip
  ~/ssljax-venv/bin/pip install --quiet "jax[tpu]==$jax_version" ~/ssljax
  touch ~/ssljax-venv/.installed-$commit
fi
for bucket in ${buckets[*]}; do
  if ! command -v gcsfuse >/dev/null; then
    codename=\$(lsb_release -c -s)
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$codename main" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
      sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
  fi
  sudo mkdir -p /gcs/\$bucket && sudo chown \$(id -u):\$(id -g) /gcs/\$bucket
  mountpoint -q /gcs/\$bucket || gcsfuse --implicit-dirs \$bucket /gcs/\$bucket
done
echo "\$(hostname): ssljax $commit ready"
EOF
)
"${gcloud_tpu[@]}" ssh "$tpu" "${common[@]}" --command="$setup"
if [[ -n ${SETUP_ONLY:-} ]]; then exit 0; fi

# ---- 3. Train on every worker at once -------------------------------------------------------
# CONFIG is relative to the repository (configs/...): the command runs in ~/ssljax.
quoted=$(printf ' %q' --config="$config" --workdir="$workdir" "${flags[@]}")
run="cd ~/ssljax && ~/ssljax-venv/bin/python -m ssljax.main$quoted"
if [[ -n ${DETACH:-} ]]; then
  run="nohup bash -c $(printf '%q' "$run") > ~/ssljax-train.log 2>&1 < /dev/null & echo started on \$(hostname)"
fi
echo "Running on every worker of $tpu: $run" >&2
"${gcloud_tpu[@]}" ssh "$tpu" "${common[@]}" --command="$run"
