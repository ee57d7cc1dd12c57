#!/usr/bin/env bash
# collect17.sh plus the ssljax-side rounding-only controls (queue18's seed 1, queue19's seeds 0
# and 2: 4 simulated CPU devices instead of 2), linked as the variant group ssljax:4dev so that
# collect_fidelity pairs them with the 2-device runs; queue19's 1-thread reference on seed 2
# joins torch:ssljax_init+inputs@1thread.
set -e
O=/work/fid/out; C=/tmp/coll19; rm -rf $C; mkdir -p $C
for s in 0 1 2 3; do
  [ -d $O/ssljax.simsiam_b64_lr1_4ep.s$s ] && ln -s $O/ssljax.simsiam_b64_lr1_4ep.s$s $C/
  d=$O/ssljax.simsiam_b64_lr1_4ep_4dev.s$s
  [ -f $d/summary.json ] && ln -s $d $C/4dev.simsiam_b64_lr1_4ep.s$s
  [ -f $O/torch.simsiam_b64_lr1_4ep.s$s.json ] && ln -s $O/torch.simsiam_b64_lr1_4ep.s$s.json $C/
  for v in jaxinit jaxinputs jaxinputs_threads1; do
    f=$O/torch.simsiam_b64_lr1_4ep_$v.s$s.json
    [ -f $f ] && ln -s $f $C/torch_$v.simsiam_b64_lr1_4ep.s$s.json
  done
done
cd /work/main && . .venv/bin/activate && python benchmarks/collect_fidelity.py $C --out ${1:-/tmp/fid19.json}
