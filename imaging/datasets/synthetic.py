"""Synthetic chest datasets backed by :mod:`imaging.phantoms` (placeholder until it lands)."""

from __future__ import annotations

from collections.abc import Sequence


class SyntheticChestDataset(Sequence):
    name = "synthetic_chest"


class SyntheticCTDataset(Sequence):
    name = "synthetic_ct"
