"""Label names of the dataset readers, loaded from ``labels.yaml`` (data, kept in one place)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("imaging.datasets").joinpath("labels.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _entry(dataset: str) -> dict:
    table = _table()
    if dataset not in table:
        raise KeyError(f"no labels for dataset {dataset!r}; known: {', '.join(sorted(table))}")
    return table[dataset]


def load_label_names(dataset: str, subset: str | None = None) -> tuple[str, ...]:
    """Ordered label names of ``dataset`` (or of its named ``subset``, e.g. CheXpert "competition").

    Raises:
        KeyError: unknown dataset or subset; the message lists the valid names.
    """
    entry = _entry(dataset)
    if subset is None:
        return tuple(entry["labels"])
    subsets = entry.get("subsets", {})
    if subset not in subsets:
        raise KeyError(
            f"dataset {dataset!r} has no label subset {subset!r}; known: {sorted(subsets)}"
        )
    return tuple(subsets[subset])


def load_label_aliases(dataset: str) -> dict[str, str]:
    """Alternative header spellings of ``dataset``'s labels, mapped to the canonical name."""
    return dict(_entry(dataset).get("aliases") or {})


def resolve_label_names(dataset: str, classes: str | tuple | list | None) -> tuple[str, ...]:
    """The label names a reader should emit: all (None), a named subset (str) or an explicit list.

    Raises:
        KeyError: unknown subset or a name that is not one of the dataset's labels.
    """
    if classes is None:
        return load_label_names(dataset)
    if isinstance(classes, str):
        return load_label_names(dataset, classes)
    names = tuple(classes)
    known = load_label_names(dataset)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"{dataset}: unknown label names {unknown}; known: {list(known)}")
    return names


def load_label_rules(dataset: str) -> dict[str, str]:
    """How each label of a synthetic source is read off the phantom findings, in label order.

    Raises:
        KeyError: unknown dataset, or a label without a rule (the message names it).
    """
    names = load_label_names(dataset)
    rules = _entry(dataset).get("rules") or {}
    missing = [n for n in names if n not in rules]
    if missing:
        raise KeyError(f"dataset {dataset!r}: labels without a rule in labels.yaml: {missing}")
    return {n: str(rules[n]) for n in names}
