"""Synthetic chest anatomy: seeded CT phantoms with findings and landmarks, and their radiographs.

>>> ct = make_chest_ct(0, findings=("nodule",))
>>> rg = make_radiograph(ct)

See ``docs/phantoms/README.md`` for pictures and ``python -m imaging.phantoms --help``.
"""

from .ct import ChestPhantom, make_chest_ct
from .findings import FINDINGS
from .landmarks import LANDMARKS
from .radiograph import Radiograph, make_radiograph
from .variation import Variation, vary_radiograph

__all__ = [
    "FINDINGS",
    "LANDMARKS",
    "ChestPhantom",
    "Radiograph",
    "Variation",
    "make_chest_ct",
    "make_radiograph",
    "vary_radiograph",
]
