#!/usr/bin/env bash
# The paired table of SimSiam lr 1.0, batch 64, 4 epochs over seeds 0-5, from the committed
# records alone (this machine was fresh: seeds 0-3's workdirs were gone): ssljax's summary.json,
# metrics.jsonl and eval_linear.json as saved by queue13/queue14/queue20, the 4-device runs'
# summary.json (queue18/queue19), the reference's JSON files. Same groups as collect19.sh; the
# 4-device rows lack the collapse monitor (their metrics.jsonl was not committed), the rest of
# collect19.sh's table is reproduced exactly.
set -e
R=/work/main/benchmarks/results; C=/tmp/coll20; rm -rf $C; mkdir -p $C
DIRS="$R/epyc512_2026-12-07c $R/epyc512_2026-12-07d $R/epyc512_2026-12-07e $R/epyc512_2026-12-08 $R/xeon512_2026-12-08"
for s in 0 1 2 3 4 5; do
  for d in $DIRS; do
    f=$d/ssljax.simsiam_b64_lr1_4ep.s$s
    if [ -f $f.summary.json ]; then
      w=$C/ssljax.simsiam_b64_lr1_4ep.s$s; mkdir -p $w
      for k in summary.json metrics.jsonl eval_linear.json; do [ -f $f.$k ] && ln -s $f.$k $w/$k; done
    fi
    f=$d/ssljax.simsiam_b64_lr1_4ep_4dev.s$s.summary.json
    [ -f $f ] && mkdir -p $C/4dev.simsiam_b64_lr1_4ep.s$s && ln -s $f $C/4dev.simsiam_b64_lr1_4ep.s$s/summary.json
    f=$d/torch.simsiam_b64_lr1_4ep.s$s.json
    [ -f $f ] && ln -s $f $C/
    for v in jaxinit jaxinputs jaxinputs_threads1; do
      f=$d/torch.simsiam_b64_lr1_4ep_$v.s$s.json
      [ -f $f ] && ln -s $f $C/torch_$v.simsiam_b64_lr1_4ep.s$s.json
    done
  done
done
cd /work/main && . .venv/bin/activate && python benchmarks/collect_fidelity.py $C --out ${1:-/tmp/fid20.json}
