"""``python -m export.run``: a run directory, weights file or official release → a verified export.

Examples::

    python -m export.run --from runs/genesis_seg --out exports/genesis_seg
    python -m export.run --from runs/ark --task classify --precision int8 --out exports/ark
    python -m export.run --from Genesis_Chest_CT.pt --official genesis --task restore \\
        --out exports/genesis_restore
    python -m export.run --from runs/peac --format all --precision fp16 --out exports/peac
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.family import BATCH_NORM_MODES

from .options import DEFAULT_OPSET, FORMATS, MIN_OPSET, PRECISIONS, ExportOptions

# the exporter (torch, timm) is imported once the arguments are parsed: `--help` stays fast


def _roi(text: str) -> tuple[int, int, int]:
    try:
        x, y, z = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z (e.g. 64,64,32), got {text!r}") from None
    return x, y, z


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.run",
        description="Export a trained model to ONNX (and TensorRT on a GPU) with a verified "
        "manifest.json that serving reads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="run directory, .safetensors weights file, or released checkpoint (with --official)",
    )
    p.add_argument(
        "--official",
        metavar="FAMILY",
        help="PATH is an officially released checkpoint of this method family "
        "(`python -m models.import_weights --help` lists them)",
    )
    p.add_argument(
        "--task",
        help="what to export the model for; each model's tasks are listed in docs/DESIGN.md "
        "(the family registry); default: the task it was trained for, else the model's first",
    )
    p.add_argument(
        "--format",
        dest="formats",
        default="onnx",
        choices=FORMATS,
        help="onnx (default), tensorrt (needs a GPU), or all (TensorRT where available)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32 (default); int8 adds a quantised ONNX for CPU serving; fp16 adds "
        "an fp16 ONNX and an fp16 TensorRT engine",
    )
    p.add_argument(
        "--quantization",
        choices=("dynamic", "static"),
        help="INT8 method (default: dynamic for transformers, static for conv nets)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="largest batch (TensorRT profile max; the runtime splits larger batches)",
    )
    p.add_argument("--head", help="Ark: export this head only (default: every head)")
    p.add_argument(
        "--batch-norm",
        default=None,
        choices=BATCH_NORM_MODES,
        help="Models Genesis: how batch-statistics normalisation becomes batch "
        "independent (default: as the run evaluated, else per_sample; see README)",
    )
    p.add_argument(
        "--roi",
        type=_roi,
        help="Models Genesis: cube size X,Y,Z (default: the training cube size, else 64,64,32)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (>= {MIN_OPSET}; default {DEFAULT_OPSET})",
    )
    p.add_argument("--name", help="model id in the manifest (default: the --out folder name)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .bundle import build_export
    from .manifest import ManifestError
    from .onnx import ExportError
    from .source import resolve_source

    opts = ExportOptions(
        task=args.task,
        formats=args.formats,
        precision=args.precision,
        max_batch=args.max_batch,
        opset=args.opset,
        head=args.head,
        batch_norm=args.batch_norm,
        roi_size=args.roi,
        quantization=args.quantization,
        name=args.name,
    )
    try:
        print(f"[export] loading {args.source}", flush=True)
        source = resolve_source(args.source, official=args.official)
        result = build_export(source, Path(args.out), opts, log=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError, ExportError, ManifestError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # TensorRTError and friends
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    m = result.manifest
    print(
        f"\nexported {m.family}/{m.task} ({m.model_name}) to {result.out_dir} "
        f"in {result.seconds:.0f} s"
    )
    for f in m.files:
        print(f"  {f.path:<20} {f.format:<9} {f.precision:<5} {f.bytes / 2**20:8.2f} MiB")
    for r in m.parity:
        status = "ok" if r.passed else "FAILED"
        print(
            f"  parity {r.runtime:<16} {r.precision:<5} batch {r.batch} ({r.inputs}): "
            f"max_abs {r.max_abs:.2e} (tol {r.atol:g}) {status}"
        )
    if m.quantization:
        print(f"  int8 ({m.quantization['mode']}) vs fp32: {m.quantization['agreement_vs_fp32']}")
    print(f"  manifest: {result.out_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
