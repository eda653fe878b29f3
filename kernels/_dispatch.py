"""One dispatch rule for every op in ``kernels/``: Triton kernel, Numba CPU kernel or reference.

``ANATOMIX_KERNELS`` forces a path: ``triton``, ``numba``, or ``torch`` (alias ``reference``).
Unset (or ``auto``), the Triton kernel runs when every tensor argument is on a CUDA device and
Triton can be imported; an op that has a compiled CPU kernel (today the 3D Models Genesis
transforms, ``kernels/genesis_cpu.py``) runs it for CPU tensors when Numba can be imported;
otherwise the reference runs. ``numba`` forces the CPU kernel where an op has one (CUDA tensors or
a missing Numba raise a ``RuntimeError``) and the reference for ops without one.

Triton compiles for a GPU driver; CPU tensors reach a kernel only through the interpreter
(``TRITON_INTERPRET=1``, set before Triton is first imported). Forcing ``triton`` on CPU tensors
without it raises a ``RuntimeError`` here rather than Triton's opaque "0 active drivers".

The kernel modules import ``triton`` and ``tl`` from here: on a machine whose torch wheel ships
without Triton they are ``None`` and :data:`jit` leaves the kernel a plain (never launched)
function, so the references still import and run.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

try:  # CPU-only torch wheels come without Triton; the references must still work there.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on Triton-less installs
    triton = None
    tl = None

__all__ = [
    "jit",
    "kernel_mode",
    "numba_available",
    "triton",
    "tl",
    "triton_available",
    "use_numba",
    "use_triton",
]

_FORCE_TRITON = {"triton"}
_FORCE_NUMBA = {"numba"}
_FORCE_TORCH = {"torch", "reference"}
_AUTO = {"", "auto"}


def jit(fn):
    """``triton.jit`` when Triton is importable, else ``fn`` unchanged (it is never launched)."""
    return triton.jit(fn) if triton is not None else fn


def triton_available() -> bool:
    """Whether Triton can be imported in this process."""
    return triton is not None


@functools.cache
def numba_available() -> bool:
    """Whether Numba can be imported in this process (tried once, on first call: it is slow)."""
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True


def kernel_mode() -> str:
    """The value of ``ANATOMIX_KERNELS``: ``"triton"``, ``"numba"``, ``"torch"`` or ``"auto"``.

    Raises:
        ValueError: any other value.
    """
    choice = os.environ.get("ANATOMIX_KERNELS", "").strip().lower()
    if choice in _FORCE_TRITON:
        return "triton"
    if choice in _FORCE_NUMBA:
        return "numba"
    if choice in _FORCE_TORCH:
        return "torch"
    if choice in _AUTO:
        return "auto"
    raise ValueError(
        "ANATOMIX_KERNELS must be 'triton', 'numba', 'torch' (alias 'reference') or unset, got "
        f"{choice!r}"
    )


def exporting() -> bool:
    """Whether a graph is being captured (ONNX export, ``torch.export``, TorchScript tracing,
    ``torch.compile``): kernels are opaque there, so every op takes its reference."""
    checks = (
        torch.onnx.is_in_onnx_export,
        torch.jit.is_tracing,
        getattr(torch.compiler, "is_exporting", lambda: False),
        getattr(torch.compiler, "is_compiling", lambda: False),
    )
    return any(check() for check in checks)


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
    if mode in ("torch", "numba") or exporting():
        return False  # export always traces the reference, whatever is forced
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


def use_numba(*tensors: torch.Tensor) -> bool:
    """Whether an op that has a Numba CPU kernel should run it on ``tensors``.

    Args:
        *tensors: the op's tensor arguments.

    Returns:
        True for the Numba kernel: forced by ``ANATOMIX_KERNELS=numba``, or automatically when
        every tensor is on the CPU and Numba imports. False for the other paths.

    Raises:
        ValueError: ``ANATOMIX_KERNELS`` has an unknown value.
        RuntimeError: ``ANATOMIX_KERNELS=numba`` but Numba is not importable or some tensor is not
            on the CPU.
    """
    mode = kernel_mode()
    if exporting():
        return False
    on_cpu = len(tensors) > 0 and all(t.device.type == "cpu" for t in tensors)
    if mode == "auto":
        return on_cpu and numba_available()
    if mode != "numba":
        return False
    if not numba_available():
        raise RuntimeError(
            "ANATOMIX_KERNELS=numba, but Numba cannot be imported; install numba (a dependency of "
            "anatomix) or set ANATOMIX_KERNELS=torch"
        )
    if not on_cpu:
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"ANATOMIX_KERNELS=numba runs CPU kernels, but the tensors are on {devices}; move them "
            "to the CPU, or unset ANATOMIX_KERNELS to use the Triton kernels on a GPU"
        )
    return True
