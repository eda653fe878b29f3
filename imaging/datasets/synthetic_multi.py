"""Heterogeneous synthetic chest X-ray sources for Ark-style multi-dataset training, no download.

Ark (Ma et al., MICCAI 2023; code ``jlianglab/Ark``) pools datasets whose experts used different
label sets, label quality and uncertainty conventions, one head per dataset. Each source here
imitates one such release with phantom radiographs (:mod:`imaging.phantoms`):

===========  ===========================================  ====================================
source       labels (``labels.yaml``, real spellings)     labeling
===========  ===========================================  ====================================
synth_cxpt   No Finding, Cardiomegaly, Pleural Effusion,  report labeler; -1 (uncertain) and
             Pneumothorax, Lung Lesion                    blank cells, then CheXpert policies
synth_nih    Cardiomegaly, Effusion, Nodule               NLP mining: 10 % of positives
                                                          missed, 2 % false positives
synth_vindr  Pleural effusion, Pneumothorax, Lung tumor,  3 readers, own error rates; positive
             No finding                                   if any reader marks the finding
synth_rsna   No Lung Opacity / Not Normal, Normal,        one class per image (one-hot)
             Lung Opacity
===========  ===========================================  ====================================

The label sets overlap through the phantom findings they read (each label's rule in
``labels.yaml``): effusion is in all four, pneumothorax is not in synth_nih, cardiomegaly not in
synth_vindr. The sources also differ in finding prevalence and in image statistics (size,
display gain and gamma, pixel noise), so there is domain shift as well as label shift.

Label model, per item and finding: the phantom has the finding or not (the truth); each reader
``r`` misses a present finding with probability ``miss_rate[r]`` and calls an absent one with
probability ``false_positive_rate[r]``; findings are aggregated over readers with "any"; the label
rules (e.g. ``none()`` for "No Finding") are applied to the aggregated calls (and, for
``meta["votes"]``, to each reader's calls). The labeler then writes cells as the CheXpert labeler
does: a positive becomes "-1" with probability ``uncertain_pos``, a negative is left blank with
probability ``blank_rate`` or becomes "-1" with probability ``uncertain_neg``. Cells are encoded
by :func:`imaging.datasets.chexpert.encode_labels`, so the ``uncertain`` / ``blank`` policies mean
exactly what they mean for CheXpert (defaults: Ark's ``lsr_ones`` and ``zero``).

Evaluation uses ``target`` by default, the dataset's own (noisy) labels, as with real data; the
clean labels are in ``meta["truth"]`` (every split) and :attr:`SyntheticSourceDataset.truth`, to
measure what a model learned against the truth. Every random draw is a function of
``(source name, seed, split, index)`` through :func:`stable_seed`, so items are identical across
instances and processes and the splits never share an item. The noise draws do not depend on the
rates, so raising a rate only adds errors to the same items.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from imaging.datasets.base import Sample, stable_seed
from imaging.datasets.chexpert import check_policies, encode_labels
from imaging.datasets.labels import load_label_names, load_label_rules
from imaging.datasets.synthetic import _SPLITS, _phantoms

_TERM = re.compile(r"^(any|none)\((.*)\)$")


@dataclass(frozen=True)
class SourceSpec:
    """One synthetic source: findings, labeling and image statistics.

    Attributes:
        name: the source name; selects its labels and rules in ``labels.yaml`` and salts seeds.
        prevalence: phantom finding -> probability that an item has it (missing findings: 0).
        miss_rate: per reader, probability of missing a present finding (its length is the
            number of readers).
        false_positive_rate: per reader, probability of calling an absent finding.
        uncertain_pos: probability that a positive cell is written "-1".
        uncertain_neg: probability that a negative cell is written "-1".
        blank_rate: probability that a negative cell is left blank (not mentioned).
        exclusive: one class per item (one-hot); the rules must cover each case exactly once.
        size: default radiograph size ``(H, W)``.
        ct_shape: default phantom CT shape ``(D, H, W)`` (None: the phantom module's default).
        gain, gamma: radiograph display, see :func:`imaging.phantoms.make_radiograph`.
        noise_std: std of the Gaussian pixel noise added to the [0, 1] image (then clipped).
    """

    name: str
    prevalence: dict[str, float]
    miss_rate: tuple[float, ...] = (0.0,)
    false_positive_rate: tuple[float, ...] = (0.0,)
    uncertain_pos: float = 0.0
    uncertain_neg: float = 0.0
    blank_rate: float = 0.0
    exclusive: bool = False
    size: tuple[int, int] = (256, 256)
    ct_shape: tuple[int, int, int] | None = None
    gain: float = 0.3
    gamma: float = 2.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        rates = [
            *self.prevalence.values(), *self.miss_rate, *self.false_positive_rate,
            self.uncertain_pos, self.uncertain_neg, self.blank_rate,
        ]  # fmt: skip
        if not all(0.0 <= r <= 1.0 for r in rates) or self.uncertain_neg + self.blank_rate > 1:
            raise ValueError(f"{self.name}: rates must lie in [0, 1] (uncertain_neg + blank too)")
        if not self.miss_rate or len(self.miss_rate) != len(self.false_positive_rate):
            raise ValueError(f"{self.name}: give miss and false-positive rates for every reader")
        if self.exclusive and (self.uncertain_pos or self.uncertain_neg or self.blank_rate):
            raise ValueError(f"{self.name}: an exclusive (one-hot) source has no -1 or blank cells")
        if self.noise_std < 0:
            raise ValueError(f"{self.name}: noise_std must be >= 0")

    @property
    def readers(self) -> int:
        return len(self.miss_rate)


#: the built-in sources; ``dataclasses.replace`` one and pass it as ``spec=`` to vary it
SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            "synth_cxpt",
            {"nodule": 0.15, "effusion": 0.30, "cardiomegaly": 0.25, "pneumothorax": 0.10},
            miss_rate=(0.05,),
            false_positive_rate=(0.02,),
            uncertain_pos=0.15,
            uncertain_neg=0.05,
            blank_rate=0.5,
            size=(320, 320),
            gain=0.30,
            gamma=2.0,
            noise_std=0.01,
        ),
        SourceSpec(
            "synth_nih",
            {"nodule": 0.10, "effusion": 0.15, "cardiomegaly": 0.08, "pneumothorax": 0.06},
            miss_rate=(0.10,),
            false_positive_rate=(0.02,),
            size=(256, 256),
            ct_shape=(48, 96, 96),
            gain=0.25,
            gamma=1.6,
            noise_std=0.02,
        ),
        SourceSpec(
            "synth_vindr",
            {"nodule": 0.06, "effusion": 0.10, "cardiomegaly": 0.12, "pneumothorax": 0.04},
            miss_rate=(0.15, 0.25, 0.35),
            false_positive_rate=(0.01, 0.02, 0.03),
            size=(384, 384),
            gain=0.35,
            gamma=2.4,
            noise_std=0.005,
        ),
        SourceSpec(
            "synth_rsna",
            {"nodule": 0.20, "effusion": 0.15, "cardiomegaly": 0.15, "pneumothorax": 0.10},
            miss_rate=(0.08,),
            false_positive_rate=(0.03,),
            exclusive=True,
            size=(256, 256),
            gain=0.28,
            gamma=1.8,
            noise_std=0.03,
        ),
    )  # fmt: skip
}


def parse_rule(text: str, findings: Sequence[str]) -> tuple[tuple[bool, np.ndarray], ...]:
    """Parse a label rule of ``labels.yaml`` into ``(is_any, finding indices)`` terms.

    A term is a finding name, ``any(f, ...)`` or ``none(f, ...)`` (empty: all findings); terms
    joined by ``&`` must all hold.
    """
    terms = []
    for part in (p.strip() for p in text.split("&")):
        m = _TERM.match(part)
        kind, names = ("any", [part]) if m is None else (m[1], m[2].split(","))
        names = [s.strip() for s in names if s.strip()] or list(findings)
        unknown = [s for s in names if s not in findings]
        if unknown:
            raise ValueError(f"label rule {text!r}: unknown finding(s) {unknown}; valid {findings}")
        terms.append((kind == "any", np.array([findings.index(s) for s in names])))
    return tuple(terms)


def apply_rules(rules, calls: np.ndarray) -> np.ndarray:
    """Labels ``(K, C)`` bool from finding calls ``(K, F)`` bool, one parsed rule per label."""
    out = np.ones((calls.shape[0], len(rules)), bool)
    for c, terms in enumerate(rules):
        for is_any, idx in terms:
            hit = calls[:, idx].any(axis=1)
            out[:, c] &= hit if is_any else ~hit
    return out


@dataclass
class ItemLabels:
    """Everything about one item's labels (cheap: no rendering)."""

    findings: list[str]  # the phantom's findings (the truth)
    truth: np.ndarray  # float32 (C,) clean labels
    votes: np.ndarray  # uint8 (R, C) each reader's labels
    cells: tuple[str, ...]  # the labeler's cells: "1", "0", "-1" or "" (blank)
    target: np.ndarray  # float32 (C,) after the uncertain / blank policies
    mask: np.ndarray  # float32 (C,)


class SyntheticSourceDataset(Sequence):
    """Phantom radiographs labelled as one synthetic source: float32 ``(H, W)`` in [0, 1].

    Args:
        root: unused (accepted for a uniform reader signature).
        split: "train", "val" or "test" (disjoint item streams).
        load_images: False returns labels without rendering (``Sample.image`` is None).
        n: number of items.
        seed: base seed of findings, label noise, LSR draws and pixel noise.
        size: radiograph size ``(H, W)`` (None: the source's default).
        ct_shape: phantom CT shape ``(D, H, W)`` (None: the source's default); small shapes such
            as ``(48, 64, 64)`` render several times faster.
        uncertain: policy for "-1" cells: "ones", "zeros", "ignore", "lsr_ones" (U(0.55, 0.85))
            or "lsr_zeros", as :class:`imaging.datasets.CheXpertDataset`.
        blank: "zero" (a known negative) or "missing" (mask 0).
        spec: replaces the source's :class:`SourceSpec` (e.g. other noise rates).
    """

    source: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        load_images: bool = True,
        n: int = 200,
        seed: int = 0,
        size: tuple[int, int] | None = None,
        ct_shape: tuple[int, int, int] | None = None,
        uncertain: str = "lsr_ones",
        blank: str = "zero",
        spec: SourceSpec | None = None,
    ) -> None:
        self.spec = SOURCES[self.source] if spec is None else spec
        self.name = self.spec.name
        if split not in _SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; valid: {', '.join(_SPLITS)}")
        if n < 0:
            raise ValueError(f"{self.name}: need n >= 0, got {n}")
        check_policies(self.name, uncertain, blank)
        self.root, self.split, self.load_images = root, split, load_images
        self.n, self.seed = n, seed
        self.size = tuple(int(s) for s in (self.spec.size if size is None else size))
        shape = self.spec.ct_shape if ct_shape is None else ct_shape
        self.ct_shape = None if shape is None else tuple(int(s) for s in shape)
        self.uncertain, self.blank = uncertain, blank
        self.label_names = load_label_names(self.name)
        self.finding_names: tuple[str, ...] = tuple(_phantoms().FINDINGS)
        unknown = sorted(set(self.spec.prevalence) - set(self.finding_names))
        if unknown:
            raise ValueError(f"{self.name}: prevalence of unknown finding(s) {unknown}")
        self.prevalence = np.array([self.spec.prevalence.get(f, 0.0) for f in self.finding_names])
        rules = load_label_rules(self.name)
        self.rules = tuple(parse_rule(rules[c], self.finding_names) for c in self.label_names)
        if self.spec.exclusive:
            every = np.array(np.meshgrid(*[[0, 1]] * len(self.finding_names))).reshape(
                len(self.finding_names), -1
            )
            if not (apply_rules(self.rules, every.T.astype(bool)).sum(axis=1) == 1).all():
                raise ValueError(f"{self.name}: exclusive rules must give exactly one class")

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(i)}")
        if not -self.n <= i < self.n:
            raise IndexError(f"{self.name}: index {i} out of range for {self.n} items")
        return int(i) % self.n

    def item_id(self, i: int) -> str:
        return f"{self.name}/{self.split}/{i}"

    def item_seed(self, i: int) -> int:
        """The phantom seed of item ``i`` (31 bits)."""
        return stable_seed(self.name, self.seed, self.split, i) % 2**31

    def findings(self, i: int) -> list[str]:
        """The phantom findings of item ``i``, each present with its source prevalence."""
        rng = np.random.default_rng(stable_seed("findings", self.name, self.seed, self.split, i))
        present = rng.random(len(self.finding_names)) < self.prevalence
        return [f for f, p in zip(self.finding_names, present, strict=True) if p]

    def labels(self, i: int) -> ItemLabels:
        """Truth, reader votes, labeler cells and the encoded target/mask of item ``i``."""
        i = self._index(i)
        found = self.findings(i)
        truth_calls = np.array([f in found for f in self.finding_names])
        rng = np.random.default_rng(stable_seed("labels", self.name, self.seed, self.split, i))
        u = rng.random((self.spec.readers, len(self.finding_names)))
        miss = np.asarray(self.spec.miss_rate)[:, None]
        fp = np.asarray(self.spec.false_positive_rate)[:, None]
        calls = np.where(truth_calls, u >= miss, u < fp)  # (R, F) each reader's findings
        votes = apply_rules(self.rules, calls)
        noisy = apply_rules(self.rules, calls.any(axis=0, keepdims=True))[0]
        v = rng.random(len(self.label_names))
        s = self.spec
        cells = tuple(
            ("-1" if vc < s.uncertain_pos else "1")
            if y
            else ("" if vc < s.blank_rate else "-1" if vc < s.blank_rate + s.uncertain_neg else "0")
            for y, vc in zip(noisy, v, strict=True)
        )
        target, mask = encode_labels(
            cells, self.label_names, uncertain=self.uncertain, blank=self.blank,
            seed=self.seed, key=self.item_id(i),
        )  # fmt: skip
        truth = apply_rules(self.rules, truth_calls[None])[0].astype(np.float32)
        return ItemLabels(found, truth, votes.astype(np.uint8), cells, target, mask)

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        lab = self.labels(i)
        meta = {
            "seed": self.item_seed(i), "split": self.split, "findings": lab.findings,
            "truth": lab.truth, "votes": lab.votes, "cells": lab.cells,
        }  # fmt: skip
        image = self.render(i) if self.load_images else None
        return Sample(image, lab.target, lab.mask, self.item_id(i), meta)

    def render(self, i: int) -> np.ndarray:
        """The radiograph of item ``i``, float32 ``(H, W)`` in [0, 1] (the slow part)."""
        i = self._index(i)
        ph, found = _phantoms(), self.findings(i)
        kw = {} if self.ct_shape is None else {"shape": self.ct_shape}
        ct = ph.make_chest_ct(self.item_seed(i), findings=found, **kw)
        xray = ph.make_radiograph(ct, size=self.size, gain=self.spec.gain, gamma=self.spec.gamma)
        if sorted(f for f, v in xray.labels.items() if v) != sorted(found):
            raise RuntimeError(f"{self.item_id(i)}: phantom findings differ from the request")
        img = np.asarray(xray.pixels, np.float32)
        if self.spec.noise_std > 0:
            rng = np.random.default_rng(stable_seed("pixels", self.name, self.seed, self.split, i))
            noise = rng.standard_normal(img.shape, dtype=np.float32)
            img = np.clip(img + np.float32(self.spec.noise_std) * noise, 0.0, 1.0)
        return img

    def __getstate__(self) -> dict:
        # worker processes re-derive the label table if they need it
        return {k: v for k, v in self.__dict__.items() if k != "_table"}

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [self.labels(i) for i in range(self.n)]
        c = len(self.label_names)

        def stack(key):
            return np.stack([getattr(r, key) for r in rows]) if rows else np.zeros((0, c))

        return tuple(stack(k).astype(np.float32) for k in ("target", "mask", "truth"))

    @property
    def targets(self) -> np.ndarray:
        """float32 ``(N, C)`` targets of all items (no rendering)."""
        return self._table[0].copy()

    @property
    def masks(self) -> np.ndarray:
        """float32 ``(N, C)`` known-label masks of all items."""
        return self._table[1].copy()

    @property
    def truth(self) -> np.ndarray:
        """float32 ``(N, C)`` clean labels of all items (for measuring against the truth)."""
        return self._table[2].copy()

    def image_params(self) -> dict:
        """Everything besides ``(name, seed, split, n)`` that the rendered pixels depend on."""
        keys = ("gain", "gamma", "noise_std")
        spec = {k: v for k, v in asdict(self.spec).items() if k in keys}
        return {
            "class": type(self).__name__, "prevalence": self.prevalence.tolist(),
            "size": list(self.size), "ct_shape": self.ct_shape, **spec,
        }  # fmt: skip

    def with_spec(self, **changes) -> SyntheticSourceDataset:
        """A copy of this dataset whose spec has ``changes`` (e.g. ``miss_rate=(0.3,)``)."""
        kw = {"load_images": self.load_images, "n": self.n, "seed": self.seed, "size": self.size}
        return type(self)(
            self.root, self.split, **kw, ct_shape=self.ct_shape, uncertain=self.uncertain,
            blank=self.blank, spec=replace(self.spec, **changes),
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={self.n}, seed={self.seed})"


class SynthCheXpertDataset(SyntheticSourceDataset):
    """CheXpert-like source: uncertain and blank cells under the CheXpert policies."""

    source = "synth_cxpt"


class SynthChestXray14Dataset(SyntheticSourceDataset):
    """ChestX-ray14-like source: NLP-mined binary labels with missed and false positives."""

    source = "synth_nih"


class SynthVinDrDataset(SyntheticSourceDataset):
    """VinDr-CXR-like source: three readers, positive if any reader marks the finding."""

    source = "synth_vindr"


class SynthRsnaDataset(SyntheticSourceDataset):
    """RSNA-Pneumonia-like source: one of three classes per image, one-hot."""

    source = "synth_rsna"


#: registry names -> readers (merged into :data:`imaging.datasets.DATASETS`)
SYNTHETIC_SOURCES: dict[str, type[SyntheticSourceDataset]] = {
    cls.source: cls
    for cls in (SynthCheXpertDataset, SynthChestXray14Dataset, SynthVinDrDataset, SynthRsnaDataset)
}
