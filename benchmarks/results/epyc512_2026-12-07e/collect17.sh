#!/usr/bin/env bash
# collect16.sh plus the 1-thread rounding-only controls (queue16's seed 1, queue17's seeds):
# collect_fidelity groups them as torch:ssljax_init+inputs@1thread (split_by_threads).
set -e
O=/work/fid/out; C=/tmp/coll17; rm -rf $C; mkdir -p $C
for s in 0 1 2 3; do
  [ -d $O/ssljax.simsiam_b64_lr1_4ep.s$s ] && ln -s $O/ssljax.simsiam_b64_lr1_4ep.s$s $C/
  [ -f $O/torch.simsiam_b64_lr1_4ep.s$s.json ] && ln -s $O/torch.simsiam_b64_lr1_4ep.s$s.json $C/
  for v in jaxinit jaxinputs jaxinputs_threads1; do
    f=$O/torch.simsiam_b64_lr1_4ep_$v.s$s.json
    [ -f $f ] && ln -s $f $C/torch_$v.simsiam_b64_lr1_4ep.s$s.json
  done
done
cd /work/main && . .venv/bin/activate && python benchmarks/collect_fidelity.py $C --out ${1:-/tmp/fid17.json}
