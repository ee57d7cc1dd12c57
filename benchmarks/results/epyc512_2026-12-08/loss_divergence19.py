"""Per-step losses of the rounding-only pairs on ssljax's side: 2 against 4 simulated devices.

    python loss_divergence19.py SEED...

For each seed whose 4-device run (queue18.sh, queue19.sh) exists under /work/fid/out: ssljax on
2 simulated CPU devices against the same run on 4 (same weights, data order and augmentation
keys; the batch and its reductions split another way). The reference's rounding-only pairs are
``../epyc512_2026-12-07e/loss_divergence17.py``'s, whose functions this reuses.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "epyc512_2026-12-07e"))
from loss_divergence17 import O, compare, ssljax_losses  # noqa: E402

for seed in sys.argv[1:]:
    if os.path.exists(f"{O}/ssljax.simsiam_b64_lr1_4ep_4dev.s{seed}/metrics.jsonl"):
        compare(
            f"seed {seed}: ssljax on 2 devices, then on 4 (rounding only)",
            ssljax_losses(seed),
            ssljax_losses(seed, "_4dev"),
        )
