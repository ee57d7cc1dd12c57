"""Per-step loss of ssljax's run against the reference on ssljax's weights and inputs."""

import json
import sys

import numpy as np

seed = sys.argv[1]
O = "/work/fid/out"
s = {}
for line in open(f"{O}/ssljax.simsiam_b64_lr1_4ep.s{seed}/metrics.jsonl"):
    r = json.loads(line)
    if "loss" in r:
        s[r["step"]] = r["loss"]
c = json.load(open(f"{O}/torch.simsiam_b64_lr1_4ep_jaxinputs.s{seed}.json"))["curve"]
t = dict(zip(c["step"], c["loss"], strict=True))
print(f"seed {seed}: |loss_ref - loss_ssljax| per step (ssljax's weights and inputs on both)")
for k in (1, 2, 5, 10, 20, 30, 40, 60, 100):
    print(f"  step {k:5d}: ssljax {s[k]:+.6f} reference {t[k]:+.6f} |diff| {abs(s[k] - t[k]):.2e}")
for a, b in ((1, 100), (101, 1000), (1001, 3124), (2125, 3124)):
    d = np.array([t[k] - s[k] for k in range(a, b + 1)])
    print(f"  steps {a:4d}-{b:4d}: mean diff {d.mean():+.4f}, mean |diff| {np.abs(d).mean():.4f}")
