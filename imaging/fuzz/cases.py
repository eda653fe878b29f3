"""Fuzz cases: each a pure function of ``(seed, iteration)``, so any failure can be replayed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .corpus import phantom_series, seed_corpus
from .mutators import DEFAULT_MAX_OPS, mutate


@dataclass
class Case:
    """One fuzz input: ``data`` (bytes, or a list of slice bytes) made from ``origin``."""

    seed: int
    iteration: int
    origin: str
    mutators: list[str]
    data: bytes | list[bytes]

    @property
    def size(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else sum(map(len, self.data))


def _case_rng(kind: str, seed: int, iteration: int) -> random.Random:
    return random.Random(f"anatomix-fuzz:{kind}:{seed}:{iteration}")  # str seeds are stable


def make_case(
    seed: int,
    iteration: int,
    *,
    corpus: Sequence[tuple[str, bytes]] | None = None,
    max_ops: int = DEFAULT_MAX_OPS,
) -> Case:
    """The mutated file of ``(seed, iteration)``: a seed file and 1..``max_ops`` mutators."""
    rng = _case_rng("file", seed, iteration)
    corpus = corpus if corpus is not None else seed_corpus()
    origin, data = corpus[rng.randrange(len(corpus))]
    n_ops = 1
    while n_ops < max_ops and rng.random() < 0.4:  # mostly one: nearly valid files go deepest
        n_ops += 1
    data, used = mutate(data, rng, n_ops)
    return Case(seed, iteration, origin, used, data)


def reproduce(seed: int, iteration: int, **kwargs) -> bytes:
    """The exact bytes a campaign fed its target at ``iteration`` (``kwargs`` as for make_case)."""
    return make_case(seed, iteration, **kwargs).data


SERIES_OPS = ("drop_slice", "duplicate_slice", "reverse_slices", "foreign_file")


def make_series_case(seed: int, iteration: int, *, max_ops: int = 2) -> Case:
    """A phantom CT series with 1..``max_ops`` slices mutated or series-level damage."""
    rng = _case_rng("series", seed, iteration)
    files, used = phantom_series(), []
    for _ in range(rng.randint(1, max_ops)):
        if rng.random() < 0.2:
            op = rng.choice(SERIES_OPS)
            k = rng.randrange(len(files))
            if op == "drop_slice" and len(files) > 1:
                del files[k]
            elif op == "duplicate_slice":
                files.insert(k, files[k])
            elif op == "reverse_slices":
                files.reverse()
            elif op == "foreign_file":
                files[k] = rng.choice(seed_corpus())[1]
            used.append(op)
        else:
            k = rng.randrange(len(files))
            files[k], ops = mutate(files[k], rng, 1)
            used += ops
    return Case(seed, iteration, "phantom_series", used, files)
