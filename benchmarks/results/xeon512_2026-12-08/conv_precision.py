"""float32 accuracy of one 3x3 convolution's forward and backward, JAX against PyTorch.

    python conv_precision.py

Batch 64, 16 -> 32 channels, 32x32, padding 1 (the scale of ResNet-18/4's first stage): the
output, input gradient and weight gradient of each float32 implementation against a float64
PyTorch computation, relative L2 error. Checks that neither side computes float32
convolutions at reduced precision on this CPU (oneDNN's implicit bf16, TF32-like modes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch

jax.config.update("jax_enable_x64", True)  # float64 for nothing below; float32 stays float32
torch.manual_seed(0)
torch.set_num_threads(2)
x = torch.randn(64, 16, 32, 32)
w = torch.randn(32, 16, 3, 3) * 0.1
gy = torch.randn(64, 32, 32, 32)


def torch_conv(dtype):
    xx, ww = x.to(dtype).clone().requires_grad_(), w.to(dtype).clone().requires_grad_()
    y = torch.nn.functional.conv2d(xx, ww, padding=1)
    y.backward(gy.to(dtype))
    return [t.detach().double().numpy() for t in (y, xx.grad, ww.grad)]


def jax_conv(x32, w32):
    def conv(a, b):
        dims = ("NCHW", "OIHW", "NCHW")
        return jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dims)

    y, vjp = jax.vjp(conv, x32, w32)
    gx, gw = vjp(jnp.asarray(gy.numpy(), jnp.float32))
    return [np.asarray(t, np.float64) for t in (y, gx, gw)]


def errors(got, ref):
    return " ".join(
        f"{n} {np.linalg.norm(g - r) / np.linalg.norm(r):.1e}"
        for n, g, r in zip(("output", "grad_input", "grad_weight"), got, ref, strict=True)
    )


ref = torch_conv(torch.float64)
print("PyTorch float32:", errors(torch_conv(torch.float32), ref))
jx = jax_conv(jnp.asarray(x.numpy(), jnp.float32), jnp.asarray(w.numpy(), jnp.float32))
print("JAX float32:    ", errors(jx, ref))
print(f"torch {torch.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
