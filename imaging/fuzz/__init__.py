"""Seeded mutation fuzzing of real DICOM files against the imaging layer (issue 10, item 2).

Mutators damage the bytes of real files the way broken software, truncated transfers and hostile
uploads do: bit flips, interesting bytes, truncation, corrupt element lengths, absurd image sizes,
wrong transfer syntaxes, duplicated/removed chunks and splices of two files. ``run_campaign`` feeds
the mutated inputs to a target (e.g. :func:`imaging.dicom.read_image`) in a watched worker process
and sorts every outcome into *ok*, *typed error* (an :class:`~imaging.errors.ImagingError`, counted
by ``code``) or *failure*: any other exception, a hang past the time limit, a worker crash, or a
peak allocation past the memory bound. Each case is a pure function of ``(seed, iteration)``, so
``reproduce(seed, iteration)`` gives back the exact bytes of any failure.

    report = run_campaign(read_image, iterations=1000, seed=0)
    assert not report.failures, report.failures[0]

Modules: ``elements`` (a light header walker and exact edits), ``mutators``, ``corpus`` (seed
files), ``cases`` (seeded inputs), ``campaign`` (the watched runner and its report).
"""

from .campaign import Failure, FuzzReport, memory_bound, run_campaign
from .cases import Case, make_case, make_series_case, reproduce
from .corpus import PHANTOM_PATIENT_ID, corpus_identifiers, phantom_series, seed_corpus
from .elements import (
    Element,
    insert_before,
    layout,
    replace_value,
    set_length,
    set_transfer_syntax,
    walk_elements,
)
from .mutators import MUTATORS, mutate

__all__ = [
    "MUTATORS",
    "PHANTOM_PATIENT_ID",
    "Case",
    "Element",
    "Failure",
    "FuzzReport",
    "corpus_identifiers",
    "insert_before",
    "layout",
    "make_case",
    "make_series_case",
    "memory_bound",
    "mutate",
    "phantom_series",
    "replace_value",
    "reproduce",
    "run_campaign",
    "seed_corpus",
    "set_length",
    "set_transfer_syntax",
    "walk_elements",
]
