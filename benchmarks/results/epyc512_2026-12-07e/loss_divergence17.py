"""Per-step losses of two runs that share weights and inputs: where they part, and by how much.

    python loss_divergence17.py SEED...

For each seed: ssljax's run against the reference on ssljax's weights and inputs (2 threads),
and that reference run against the same with 1 thread (a rounding-only control), when those
runs exist under /work/fid/out.
"""

import json
import os
import sys

import numpy as np

O = "/work/fid/out"
PREFIX = f"{O}/torch.simsiam_b64_lr1_4ep"


def ssljax_losses(seed: str, variant: str = "") -> dict[int, float]:
    out = {}
    for line in open(f"{O}/ssljax.simsiam_b64_lr1_4ep{variant}.s{seed}/metrics.jsonl"):
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def torch_losses(path: str) -> dict[int, float]:
    c = json.load(open(path))["curve"]
    return dict(zip(c["step"], c["loss"], strict=True))


def compare(title: str, a: dict[int, float], b: dict[int, float]) -> None:
    print(title)
    for k in (1, 2, 5, 10, 20, 30, 40, 60, 100):
        print(f"  step {k:5d}: {a[k]:+.6f} {b[k]:+.6f} |diff| {abs(a[k] - b[k]):.2e}")
    last = max(set(a) & set(b))
    for lo, hi in ((1, 100), (101, 1000), (1001, last), (last - 999, last)):
        d = np.array([b[k] - a[k] for k in range(lo, hi + 1)])
        mean_abs = np.abs(d).mean()
        print(f"  steps {lo:4d}-{hi:4d}: mean diff {d.mean():+.4f}, mean |diff| {mean_abs:.4f}")


if __name__ == "__main__":  # loss_divergence19.py imports the functions above
    for seed in sys.argv[1:]:
        two, one = f"{PREFIX}_jaxinputs.s{seed}.json", f"{PREFIX}_jaxinputs_threads1.s{seed}.json"
        if os.path.exists(two):
            compare(
                f"seed {seed}: ssljax, then the reference on its weights and inputs (2 threads)",
                ssljax_losses(seed),
                torch_losses(two),
            )
            if os.path.exists(one):
                compare(
                    f"seed {seed}: the reference with 2 threads, then with 1 (rounding only)",
                    torch_losses(two),
                    torch_losses(one),
                )
