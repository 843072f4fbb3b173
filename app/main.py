"""``vadapt demo``: find the checkpoints (the built-in demo ones, built on first start if absent, plus any
``--checkpoints`` folders), then serve the page."""

from __future__ import annotations

import argparse
import atexit
import shutil
from pathlib import Path

from .limits import Limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vadapt demo`` options (also used by ``python -m vadapt.app``)."""
    parser.add_argument("--checkpoints", action="append", metavar="DIR",
                        help="folder searched (recursively) for adapter .safetensors, offered beside the built-in "
                             "demo checkpoints (data/demo, built on first start if absent); repeatable")
    parser.add_argument("--no-builtin", action="store_true",
                        help="offer only the --checkpoints folders' checkpoints, not the built-in demo ones")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public *.gradio.live link (off by default; "
                        "needs internet)")
    parser.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb,
                        help=f"largest uploaded file in MB (default {Limits.max_upload_mb:g})")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels,
                        help=f"largest image in pixels, height x width (default {Limits.max_pixels:,})")


def make_demo(checkpoint_dirs: list[str] | None, limits: Limits, progress=print, builtin: bool = True):
    """A :class:`~.service.Demo` over ``checkpoint_dirs`` and (unless ``builtin`` is False) the built-in demo
    checkpoints; the user's folders come first, so their checkpoints are the tabs' defaults."""
    from . import demo_files
    from .checkpoints import find_checkpoints
    from .service import Demo
    from .ui import workdir

    folders = [Path(d) for d in checkpoint_dirs or ()]
    if not folders and not builtin:
        raise ValueError("--no-builtin needs at least one --checkpoints folder")
    builtin_folder = demo_files.ensure_defaults(progress) if builtin else None
    if builtin_folder is not None:
        folders.append(builtin_folder)
    found, skipped = find_checkpoints(folders)
    for line in skipped:
        progress(f"skipped: {line}")
    progress(f"{len(found)} checkpoint(s) under {', '.join(map(str, folders))}")
    folder = workdir()
    examples = demo_files.write_examples(folder / "examples") if demo_files.SCENE.is_file() else {}
    return Demo(found, limits, folder, examples, builtin=builtin_folder)


def run(args: argparse.Namespace) -> int:
    from .ui import launch

    limits = Limits(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels)
    demo = make_demo(args.checkpoints, limits, builtin=not args.no_builtin)
    atexit.register(shutil.rmtree, demo.workdir, True)  # downloads and examples of this run
    launch(demo, args.host, args.port, args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vadapt.app", description="vadapt's Gradio demo")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.no_builtin and not args.checkpoints:
        parser.error("--no-builtin needs at least one --checkpoints folder")
    return run(args)
