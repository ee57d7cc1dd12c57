"""This machine's measured peak: the FLOP rate of a large float32 matrix product.

The denominator of the utilisation that ``benchmarks/step.py`` reports. A square float32
product of size n costs 2 n^3 FLOPs; the best of ``--repeats`` runs is kept (the machine is
shared, and the best run is the one least disturbed). JAX is measured on one XLA CPU device and
on one device per core (the left operand's rows sharded over a ``data`` mesh, the right operand
replicated, so each device multiplies an n x n block); NumPy (OpenBLAS) and PyTorch (oneDNN /
MKL), when installed, are measured too, as cross-checks that XLA's product is not the limit.
bfloat16 products are measured with ``--dtypes float32,bfloat16`` (for information: the
utilisation is always taken against the float32 peak).

    python benchmarks/peak_flops.py
    python benchmarks/peak_flops.py --size 4096 --repeats 5 --devices 1,2 --backends jax,numpy
"""

from __future__ import annotations

import argparse
import json
import os

import _timing

BACKENDS = ("jax", "numpy", "torch")
KEY = ("backend", "devices", "dtype", "size")


def _measure(fn, repeats: int) -> list[float]:
    fn()  # warm-up (and compile)
    return _timing.time_calls(fn, steps=repeats, warmup=0)


def child(spec: dict) -> dict:
    """Times ``repeats`` products of size ``size`` on ``spec['backend']``."""
    import numpy as np

    n, backend, dtype = spec["size"], spec["backend"], spec["dtype"]
    rng = np.random.default_rng(0)
    devices = spec["devices"]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        P = jax.sharding.PartitionSpec
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        devices = jax.device_count()
        a = jax.device_put(
            jnp.asarray(rng.standard_normal((devices * n, n), np.float32), dtype),
            jax.sharding.NamedSharding(mesh, P("data")),
        )
        b = jax.device_put(
            jnp.asarray(rng.standard_normal((n, n), np.float32), dtype),
            jax.sharding.NamedSharding(mesh, P()),
        )
        matmul = jax.jit(jnp.matmul)
        times = _measure(lambda: matmul(a, b).block_until_ready(), spec["repeats"])
    elif backend == "numpy":
        if dtype != "float32":
            raise ValueError("numpy: only float32")
        a = rng.standard_normal((n, n), np.float32)
        b = rng.standard_normal((n, n), np.float32)
        times = _measure(lambda: a @ b, spec["repeats"])
    elif backend == "torch":
        import torch

        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        a = torch.randn(n, n, dtype=tdtype)
        b = torch.randn(n, n, dtype=tdtype)
        times = _measure(lambda: a @ b, spec["repeats"])
    else:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    flops = 2.0 * n**3 * devices
    return {
        **spec,
        "devices": devices,
        "flops": flops,
        "times_s": [round(t, 4) for t in times],
        "best_gflops": round(flops / min(times) / 1e9, 1),
        "median_gflops": round(flops / sorted(times)[len(times) // 2] / 1e9, 1),
        "loadavg": _timing.load_average(),
        "date": _timing.machine_info()["date"],
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="n of the n x n x n product")
    parser.add_argument("--repeats", type=int, default=5, help="timed products; best kept")
    parser.add_argument("--devices", default=f"1,{os.cpu_count() or 1}", help="JAX device counts")
    parser.add_argument("--backends", default="jax,numpy,torch")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR / "peak_flops.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        _timing.emit_result(child(json.loads(args.child)))
        return
    rows = []
    for backend in args.backends.split(","):
        device_counts = [int(d) for d in args.devices.split(",")] if backend == "jax" else [1]
        for dtype in args.dtypes.split(","):
            if backend == "numpy" and dtype != "float32":
                continue
            for devices in device_counts:
                spec = {
                    "backend": backend,
                    "devices": devices,
                    "dtype": dtype,
                    "size": args.size,
                    "repeats": args.repeats,
                }
                rows.append(
                    _timing.run_child(__file__, spec, devices=devices if backend == "jax" else None)
                )
                _timing.write_results(
                    args.out,
                    {**_timing.machine_info(), "script": "benchmarks/peak_flops.py"},
                    rows,
                    key=KEY,
                )
    _timing.print_table(
        rows, ("backend", "dtype", "devices", "size", "best_gflops", "median_gflops", "loadavg")
    )
    for r in rows:
        if "error" in r:
            print(r["backend"], r["error"])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
