"""Cost of reliability: time to resume (restore + first step) and what async checkpoints add.

    python benchmarks/resume.py --data_dir=DIR --root=CIFAR_FOLDER [--steps=8]

Builds the ``configs/byol.py:cifar10`` train step (ResNet-18, CIFAR stem, batch 256 unless
overridden), then measures, in this process:

* the median step time with no checkpointing, and with an asynchronous checkpoint after every
  ``--every`` steps (the saving runs beside the next steps);
* the time to resume: restoring the newest checkpoint into the state's sharding, plus the first
  step (compilation included, as in a restarted process).

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

from ssljax import host_devices

host_devices.configure_cpu_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssljax import checkpointing, config_schema, data, sharding, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/byol.py:cifar10")
    parser.add_argument("--data_dir", required=True, help="where image_folder is prepared")
    parser.add_argument("--root", required=True, help="the image folder it was prepared from")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/resume.json")
    args = parser.parse_args()

    config = config_schema.load_config(args.config)
    config.data.data_dir = args.data_dir
    config.data.root = args.root
    config.global_batch = args.batch
    info = data.get_dataset_info(config.data)
    comps = train.build_components(config, info, num_train_examples=info.split_sizes["train"])
    mesh = sharding.make_mesh()
    repl, data_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    init = functools.partial(train.init_state, comps, config)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_sh = jax.tree.map(lambda _: repl, shapes)
    step_fn = jax.jit(
        train.make_train_step(comps, config),
        in_shardings=(state_sh, data_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    loader = data.make_loader(
        config.data,
        split="train",
        global_batch=args.batch,
        seed=0,
        shuffle=True,
        drop_remainder=True,
    )
    batches = data.device_prefetch(loader, data_sh)
    state = jax.jit(init, out_shardings=state_sh)(jax.random.PRNGKey(0))
    state, m = step_fn(state, next(batches))  # compile
    jax.block_until_ready(m)

    def timed_steps(n, ckpt=None):
        nonlocal state
        times = []
        for i in range(n):
            t = time.perf_counter()
            state, m = step_fn(state, next(batches))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
            if ckpt is not None and (i + 1) % args.every == 0:
                ckpt.save(int(state.step), state, batches.state_of_last_consumed())
        return times

    plain = timed_steps(args.steps)
    workdir = tempfile.mkdtemp()
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "ckpt"), keep=2, async_save=True)
    t = time.perf_counter()
    ckpt.save(int(state.step), state, batches.state_of_last_consumed())
    save_return = time.perf_counter() - t
    ckpt.wait()
    save_complete = time.perf_counter() - t
    with_ckpt = timed_steps(args.steps, ckpt)
    ckpt.wait()
    batches.close()

    # Resume: restore into the sharding, a fresh jit (as in a new process), the first step.
    jax.clear_caches()
    t = time.perf_counter()
    restored, loader_state = ckpt.restore_latest(shapes, state_sh)
    restore_s = time.perf_counter() - t
    loader2 = data.make_loader(
        config.data,
        split="train",
        global_batch=args.batch,
        seed=0,
        shuffle=True,
        drop_remainder=True,
    )
    loader2.set_state(loader_state)
    batches2 = data.device_prefetch(loader2, data_sh)
    step_fn2 = jax.jit(
        train.make_train_step(comps, config),
        in_shardings=(state_sh, data_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    restored, m = step_fn2(restored, next(batches2))
    jax.block_until_ready(m)
    resume_s = time.perf_counter() - t
    batches2.close()
    ckpt.close()

    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    result = {
        "config": args.config,
        "batch": args.batch,
        "devices": jax.device_count(),
        "state_mb": state_bytes / 1e6,
        "median_step_s_no_ckpt": statistics.median(plain),
        f"median_step_s_async_ckpt_every_{args.every}": statistics.median(with_ckpt),
        "mean_step_s_no_ckpt": float(np.mean(plain)),
        f"mean_step_s_async_ckpt_every_{args.every}": float(np.mean(with_ckpt)),
        "async_save_returns_s": save_return,
        "async_save_completes_s": save_complete,
        "restore_s": restore_s,
        "resume_restore_plus_first_step_s": resume_s,
        "load_average": os.getloadavg()[0],
    }
    for k, v in result.items():
        print(f"{k:40s} {v}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
