"""The ``vadapt`` command.

``fit | validate | test | predict`` go to LightningCLI (``--config CFG`` with class_path/init_args YAML);
``list``, ``params`` and ``export`` are ours. Nothing heavy is imported until a subcommand runs, so
``vadapt --help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vadapt",
        description="Adapt frozen vision foundation models with a tiny number of trainable parameters.",
        epilog="Lightning subcommands take the usual LightningCLI options; see `vadapt fit --help`.",
    )
    parser.add_argument("--version", action="version", version=f"vadapt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("fit", "train an adapter from a YAML config"),
        ("validate", "evaluate on the validation split"),
        ("test", "evaluate on the test split"),
        ("predict", "run the model on the predict split"),
    ):
        sub.add_parser(name, help=text, add_help=False)
    lister = sub.add_parser("list", help="list registered backbones, adapters or tasks")
    lister.add_argument("what", nargs="?", choices=("backbones", "adapters", "tasks"), default="backbones")
    lister.add_argument("--all", action="store_true", help="include tiny test variants")
    params = sub.add_parser("params", help="count total / trainable parameters of a config's model")
    params.add_argument("--config", required=True, help="LightningCLI YAML; only its `model` section is built")
    params.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    stats = sub.add_parser("stats", help="per-band mean/std of a config's training data, as YAML for the model")
    stats.add_argument("--config", required=True, help="LightningCLI YAML; only its `data` section is built")
    stats.add_argument("--digits", type=int, default=4, help="decimals to print (default 4)")
    export = sub.add_parser("export", help="write an adapter checkpoint from a Lightning checkpoint")
    export.add_argument("--checkpoint", required=True, help="Lightning .ckpt or vadapt .safetensors")
    export.add_argument("--output", required=True, help="output .safetensors (or .onnx with --onnx)")
    export.add_argument("--merge", action="store_true", help="fold LoRA/DoRA into the backbone; write full weights")
    export.add_argument("--onnx", action="store_true", help="export the merged model to ONNX, checked with onnxruntime")
    export.add_argument("--weights", help="backbone weights to use instead of the path stored in the checkpoint")
    export.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                        help="example input size for --onnx (default 224 224)")
    return parser


def _version() -> str:
    import vadapt

    return vadapt.__version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "list":
        print(list_entries(args.what, args.all))
    elif args.command == "params":
        import torch

        from vadapt.config import task_from_config_file
        from vadapt.params import format_table

        with torch.device("meta"):  # counts need shapes only: no weight file, no memory
            counts = task_from_config_file(args.config, weights=None).parameter_counts()
        print(json.dumps(counts) if args.json else format_table(counts))
    elif args.command == "stats":
        from vadapt.data.stats import print_band_stats

        print_band_stats(args.config, args.digits)
    elif args.command == "export":
        from vadapt.export import export

        for line in export(args.checkpoint, args.output, merge=args.merge, onnx=args.onnx,
                           weights=args.weights, input_size=tuple(args.input_size)):
            print(line)
    return 0


def run_lightning(argv: list[str]) -> None:
    from lightning import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    from vadapt.config import enable_adapter_configs
    from vadapt.data.io import find_data_error
    from vadapt.memory import return_freed_memory_to_os
    from vadapt.tasks.base import BaseTask

    enable_adapter_configs()
    return_freed_memory_to_os()  # see vadapt/memory.py: keeps the resident memory at what the step needs
    try:
        LightningCLI(
            BaseTask,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )
    except (Exception, SystemExit) as exc:
        # jsonargparse buries a datamodule's own error inside a long type-check report: surface its sentence
        data_error = find_data_error(exc)
        if data_error is None:
            raise
        print(f"error: {data_error}", file=sys.stderr)
        raise SystemExit(2) from None


def list_entries(what: str, include_tiny: bool = False) -> str:
    if what == "backbones":
        from vadapt.backbones import BACKBONES

        rows = [("name", "family", "weights", "description")]
        for name in BACKBONES:
            e = BACKBONES.get(name)
            if e.tiny and not include_tiny:
                continue
            rows.append((name, e.family, e.weights.filename if e.weights else "-", e.description))
        return _columns(rows)
    if what == "adapters":
        from vadapt.adapters import ADAPTERS

        rows = [("name", "config class", "mergeable")]
        for name in ADAPTERS:
            m = ADAPTERS.get(name)
            cls = m.config_class
            rows.append((name, f"{cls.__module__}.{cls.__qualname__}", "yes" if m.merge else "no"))
        return _columns(rows)
    from vadapt.tasks import TASKS

    return "\n".join(TASKS)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
