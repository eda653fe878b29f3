"""CUDA device buffers and streams for the TensorRT runner, through NVIDIA's ``cuda-bindings``
(the CUDA runtime API, a few MB) instead of torch, so that serving never imports the training
stack (issue #17). Only what :class:`export.tensorrt.TensorRTRunner` needs: allocate, copy in,
copy out, a stream, a device count."""

from __future__ import annotations

from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """The CUDA runtime is unavailable or a call failed."""


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-bindings >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise CudaError(
                "the `cuda-bindings` package is not installed (pip install 'anatomix[gpu]')"
            ) from exc
    return runtime


def _check(result: tuple, what: str) -> Any:
    """cuda-bindings return ``(error, *values)``: raise on an error, else the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise CudaError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def device_count() -> int:
    """CUDA devices visible to this process (0 without a driver or the bindings)."""
    try:
        rt = _cudart()
        err, n = rt.cudaGetDeviceCount()
    except Exception:  # no bindings, no driver: no device
        return 0
    return int(n) if int(err) == 0 else 0


def set_device(device: int) -> None:
    _check(_cudart().cudaSetDevice(device), f"cudaSetDevice({device})")


def current_device() -> int:
    return int(_check(_cudart().cudaGetDevice(), "cudaGetDevice"))


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._rt = _cudart()
        self._stream = _check(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def raw(self) -> Any:
        """The bindings' own stream object."""
        return self._stream

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        _check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class DeviceArray:
    """``shape`` × ``dtype`` in device memory (freed on :meth:`free` or garbage collection)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._rt = _cudart()
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._ptr = _check(self._rt.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc")

    @property
    def ptr(self) -> int:
        return int(self._ptr)

    def copy_from(self, host: np.ndarray, stream: Stream) -> None:
        """Queue a copy of ``host`` (C-contiguous, this shape and dtype) onto the device; the
        caller keeps ``host`` alive until the stream is synchronised."""
        if host.shape != self.shape or host.dtype != self.dtype or not host.flags.c_contiguous:
            raise CudaError(f"host array {host.shape} {host.dtype} does not fit {self}")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        done = self._rt.cudaMemcpyAsync(self._ptr, host.ctypes.data, self.nbytes, kind, stream.raw)
        _check(done, "cudaMemcpyAsync (to the device)")

    def copy_to_host(self, stream: Stream) -> np.ndarray:
        """Copy back to a new host array (synchronises ``stream``)."""
        host = np.empty(self.shape, self.dtype)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        done = self._rt.cudaMemcpyAsync(host.ctypes.data, self._ptr, self.nbytes, kind, stream.raw)
        _check(done, "cudaMemcpyAsync (to the host)")
        stream.synchronize()
        return host

    def free(self) -> None:
        if self._ptr is not None:
            self._rt.cudaFree(self._ptr)
            self._ptr = None

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"DeviceArray({self.shape}, {self.dtype})"
