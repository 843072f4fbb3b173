"""vadapt's LightningCLI: what ``vadapt fit | validate | test | predict`` build from a YAML config.

Kept apart from :mod:`vadapt.cli` (which imports nothing heavy) because importing Lightning takes seconds.

Where a run writes: everything goes under ``trainer.default_root_dir`` (``<root>/lightning_logs/version_N/``:
``metrics.csv``, ``curves.png``, ``predictions/``, ``checkpoints/``, ``config.yaml``, ``adapter.safetensors``),
so ``--trainer.default_root_dir X`` moves it all. The default logger is a ``CSVLogger`` whose ``save_dir`` reads
:data:`FOLLOW_ROOT`, replaced by the root before the trainer is built; an explicit ``save_dir`` is kept, and any
logger may use :data:`FOLLOW_ROOT` too. TensorBoard beside the CSV file (``tensorboard`` is installed with vadapt)::

    vadapt fit --config configs/quickstart.yaml --trainer.logger+=TensorBoardLogger \\
        --trainer.logger.save_dir '${trainer.default_root_dir}' --trainer.logger.name tensorboard
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

#: a logger ``save_dir`` that follows ``trainer.default_root_dir`` (Lightning's default root: the working folder)
FOLLOW_ROOT = "${trainer.default_root_dir}"
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": FOLLOW_ROOT}}


class VadaptCLI(LightningCLI):
    """LightningCLI with vadapt's defaults (see :func:`vadapt.cli.run_lightning` for the arguments): a CSV logger
    under ``trainer.default_root_dir`` unless the config or the command line names other loggers."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The default logger: a ``CSVLogger`` following the root (a config naming ``CSVLogger`` keeps it too)."""
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGER})

    def before_instantiate_classes(self) -> None:
        """Loggers whose ``save_dir`` is :data:`FOLLOW_ROOT` write under ``trainer.default_root_dir``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or "."
        for logger in logger_entries(config.trainer.logger):
            if logger.init_args.get("save_dir") == FOLLOW_ROOT:
                logger.init_args.save_dir = str(root)


def logger_entries(value: Any) -> Iterator[Namespace]:
    """The ``{class_path, init_args}`` entries of a parsed ``trainer.logger`` (one, a list, or a bool / None)."""
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, Namespace) and isinstance(entry.get("init_args"), Namespace):
            yield entry
