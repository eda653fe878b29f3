"""One dispatch rule for every op in ``kernels/``: Triton kernel or PyTorch reference.

``ANATOMIX_KERNELS`` forces a path: ``triton``, or ``torch`` (alias ``reference``). Unset (or
``auto``), the Triton kernel runs when every tensor argument is on a CUDA device and Triton can be
imported; otherwise the reference runs.

Triton compiles for a GPU driver; CPU tensors reach a kernel only through the interpreter
(``TRITON_INTERPRET=1``, set before Triton is first imported). Forcing ``triton`` on CPU tensors
without it raises a ``RuntimeError`` here rather than Triton's opaque "0 active drivers".

The kernel modules import ``triton`` and ``tl`` from here: on a machine whose torch wheel ships
without Triton they are ``None`` and :data:`jit` leaves the kernel a plain (never launched)
function, so the references still import and run.
"""

from __future__ import annotations

import os

import torch

try:  # CPU-only torch wheels come without Triton; the references must still work there.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on Triton-less installs
    triton = None
    tl = None

__all__ = ["jit", "kernel_mode", "triton", "tl", "triton_available", "use_triton"]

_FORCE_TRITON = {"triton"}
_FORCE_TORCH = {"torch", "reference"}
_AUTO = {"", "auto"}


def jit(fn):
    """``triton.jit`` when Triton is importable, else ``fn`` unchanged (it is never launched)."""
    return triton.jit(fn) if triton is not None else fn


def triton_available() -> bool:
    """Whether Triton can be imported in this process."""
    return triton is not None


def kernel_mode() -> str:
    """The value of ``ANATOMIX_KERNELS``: ``"triton"``, ``"torch"`` or ``"auto"``.

    Raises:
        ValueError: any other value.
    """
    choice = os.environ.get("ANATOMIX_KERNELS", "").strip().lower()
    if choice in _FORCE_TRITON:
        return "triton"
    if choice in _FORCE_TORCH:
        return "torch"
    if choice in _AUTO:
        return "auto"
    raise ValueError(
        f"ANATOMIX_KERNELS must be 'triton', 'torch' (alias 'reference') or unset, got {choice!r}"
    )


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op called on ``tensors`` should run its Triton kernel.

    Args:
        *tensors: the op's tensor arguments.

    Returns:
        True for the Triton path, False for the PyTorch reference.

    Raises:
        ValueError: ``ANATOMIX_KERNELS`` has an unknown value.
        RuntimeError: ``ANATOMIX_KERNELS=triton`` but Triton is not importable, or some tensor is on
            the CPU and the Triton interpreter (``TRITON_INTERPRET=1``) is not enabled.
    """
    mode = kernel_mode()
    if mode == "torch":
        return False
    on_cuda = len(tensors) > 0 and all(t.is_cuda for t in tensors)
    if mode == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(
            "ANATOMIX_KERNELS=triton, but Triton cannot be imported; install a torch build with "
            "Triton or set ANATOMIX_KERNELS=torch"
        )
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "ANATOMIX_KERNELS=triton with CPU tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before Triton is first imported, move the tensors to a CUDA "
            "device, or set ANATOMIX_KERNELS=torch"
        )
    return True
