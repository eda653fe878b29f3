"""Command line: import an officially released checkpoint into anatomix's safetensors format.

python -m models.import_weights genesis Genesis_Chest_CT.pt --out genesis.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, import, print the report; exit status 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m models.import_weights",
        description="Import an officially released checkpoint (read with weights_only=True) and "
        "write it in anatomix's safetensors format.",
    )
    parser.add_argument(
        "family", help="method family of the release (an unknown one lists the valid families)"
    )
    parser.add_argument("path", type=Path, help="the released file, e.g. Genesis_Chest_CT.pt")
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    parser.add_argument(
        "--non-strict",
        action="store_true",
        help="load the matching tensors even if some keys differ",
    )
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError  # torch: after --help
    from .official import import_official

    try:
        report = import_official(args.family, args.path, out=args.out, strict=not args.non_strict)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    except (CheckpointError, OSError) as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
