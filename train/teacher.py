"""Student-teacher pairs: an EMA teacher that is never optimised, and the cosine schedules that
drive its momentum (Ark, PEAC) and Ark's consistency weight.

The schedule is the DINO-style per-index cosine the Ark and PEAC releases build their momentum
and weight tables with: ``value(i) = end + (start - end) * (1 + cos(pi * i / total)) / 2`` for
``i = 0 .. total - 1`` (so the table starts at ``start`` and approaches, without reaching,
``end``); indices past the table keep ``end``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_value(start: float, end: float, total: int, i: int) -> float:
    """Entry ``i`` of a ``total``-long cosine table from ``start`` towards ``end``."""
    if total <= 0 or i >= total:
        return float(end)
    return end + (start - end) * (1 + math.cos(math.pi * i / total)) / 2


class StudentTeacher(nn.Module):
    """A trained ``student`` and its frozen exponential-moving-average copy ``teacher``.

    The teacher starts as an exact copy, never receives gradients and always runs in eval mode
    (dropout off, normalisation layers on running statistics). The optimiser may be built over
    ``parameters()``: the teacher's parameters have ``requires_grad=False`` and no gradient, so
    every optimiser skips them.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> StudentTeacher:
        self.student.train(mode)
        self.teacher.eval()
        self.training = mode
        return self

    def forward(self, x_student, x_teacher=None, **kwargs):
        """Student output on ``x_student``; and the teacher's on ``x_teacher`` (no grad) or None."""
        out_s = self.student(x_student, **kwargs)
        if x_teacher is None:
            return out_s, None
        with torch.no_grad():
            out_t = self.teacher(x_teacher, **kwargs)
        return out_s, out_t

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, over the parameters.

        As released (Ark, PEAC), the average runs over parameters; buffers (normalisation
        running statistics) are copied from the student so a BatchNorm teacher stays coherent.
        """
        s_params = list(self.student.parameters())
        t_params = list(self.teacher.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
        for t_buf, s_buf in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            t_buf.copy_(s_buf)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model
