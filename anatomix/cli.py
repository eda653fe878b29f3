"""``anatomix``: one command in front of the project's tools (each ``python -m`` form still works).

    anatomix train ARGS            python -m train.run ARGS (pretrain, finetune, transfer, evaluate)
    anatomix export ARGS           python -m export.run ARGS
    anatomix evaluate-export ARGS  python -m export.evaluate ARGS
    anatomix import-weights ARGS   python -m models.import_weights ARGS
    anatomix correspond ARGS       python -m models.peac_correspond ARGS
    anatomix serve [--models DIR] [--host H] [--port P]   bentoml serve on the exports in DIR

A tool is imported only when it is chosen, so ``anatomix --help`` starts without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

#: subcommand → (module with ``main(argv) -> int``, one line of help)
TOOLS = {
    "train": ("train.run", "pretrain, fine-tune, transfer or evaluate a run"),
    "export": ("export.run", "export a run or an official release to ONNX / TensorRT"),
    "evaluate-export": ("export.evaluate", "score an exported segmentation model"),
    "import-weights": ("models.import_weights", "convert an official release to safetensors"),
    "correspond": ("models.peac_correspond", "match points between two radiographs with PEAC"),
}
SERVICE = "serve.service:AnatomixService"


def usage() -> str:
    lines = ["usage: anatomix COMMAND [ARGS...]   (anatomix COMMAND --help for its options)", ""]
    lines += [f"  {name:<16} {text}" for name, (_, text) in TOOLS.items()]
    lines.append(f"  {'serve':<16} serve the exported models over HTTP (BentoML)")
    return "\n".join(lines)


def serve(argv: list[str]) -> int:
    """``bentoml serve`` of the anatomix service, as ``make serve`` runs it (without the demo
    build): ``MALLOC_ARENA_MAX=2`` unless the environment sets it."""
    p = argparse.ArgumentParser(prog="anatomix serve", description=serve.__doc__.split("\n")[0])
    p.add_argument("--models", help="directory of exports (default: $ANATOMIX_MODELS or exports)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    args = p.parse_args(argv)
    env = {"MALLOC_ARENA_MAX": "2"} | dict(os.environ)
    if args.models:
        env["ANATOMIX_MODELS"] = args.models
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host]
    return subprocess.call([*cmd, "--port", str(args.port)], env=env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "serve":
        return serve(rest)
    if name not in TOOLS:
        print(f"anatomix: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(TOOLS[name][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
