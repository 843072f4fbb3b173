"""The ``vadapt`` command.

``fit | validate | test | predict`` go to LightningCLI (``--config CFG`` with class_path/init_args YAML);
``list``, ``params``, ``stats``, ``export`` and ``infer`` are ours. Nothing heavy is imported until a
subcommand runs, so ``vadapt --help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class _Parser(argparse.ArgumentParser):
    """argparse with one line for a bad argument (``error: ...``, exit code 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    _add_infer(sub)
    _add_predict_points(sub)
    _add_demo(sub)
    _add_make_shapes(sub)
    _add_make_endoscopy(sub)
    _add_pretrain_points(sub)
    _add_pretrain_diffusion(sub)
    _add_generate(sub)
    return parser


def _add_generate(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate", help="sample images with a diffusion adapter (config or adapter checkpoint)",
        description="Sample images from a DiffusionAdapterTask built from --config (its model section) or loaded "
        "from --checkpoint (an adapter .safetensors), with a progress bar over the denoising steps. Writes "
        "OUTPUT/<prompt>_seed<S>_<n>.png (video tasks: .gif; multi-view: one _views.png row per object).",
    )
    gen.add_argument("--config", help="generation YAML (its model section is built)")
    gen.add_argument("--checkpoint", help="adapter .safetensors of a DiffusionAdapterTask")
    gen.add_argument("--weights", help="base model (diffusers folder, single file or hub id) instead of the stored one")
    gen.add_argument("--prompt", action="append", required=True, help="text prompt; repeatable")
    gen.add_argument("--negative-prompt", default="", help="classifier-free guidance's negative prompt")
    gen.add_argument("--height", type=int, required=True, help="image height in pixels (multiple of the VAE factor)")
    gen.add_argument("--width", type=int, required=True, help="image width in pixels (multiple of the VAE factor)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0; prompt i uses seed + i)")
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the task's num_inference_steps)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the task's)")
    gen.add_argument("--sampler", choices=("ddim", "euler", "dpm"), help="scheduler (default: the task's)")
    gen.add_argument("--first-frame", help="video (I2V-Adapter): the image to animate")
    gen.add_argument("--num-frames", type=int, help="video: frames per clip (default: the task's)")
    gen.add_argument("--video-format", choices=("gif", "mp4"), default="gif",
                     help="video: animated GIF (default) or MP4 (H.264 where OpenCV's build has it, else MPEG-4)")
    gen.add_argument("--fps", type=int, default=8, help="video: frames per second of the written clip (default 8)")
    gen.add_argument("--reference", help="multi-view (image-to-multiview MV-Adapter): the reference image")
    gen.add_argument("--num-views", type=int, help="multi-view: views per object (default: the task's)")
    gen.add_argument("--output", required=True, help="output folder")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_pretrain_points(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser(
        "pretrain-points", help="self-supervised Point-MAE pretraining of a point backbone (writes official .pth)",
        description="Pretrain a point backbone with Point-MAE (masked patch reconstruction, Chamfer-L2) on the "
        "clouds of DATA (ModelNet folder layout, e.g. from `vadapt make-shapes`) and write its encoder to OUTPUT "
        "in the official Point-MAE pretrain format, loadable as weights: OUTPUT.",
    )
    pre.add_argument("--data", required=True, help="folder of <class>/train/* point clouds")
    pre.add_argument("--output", required=True, help="the .pth to write (atomically, when training ends)")
    pre.add_argument("--backbone", default="point_mae", help="registered point backbone (default point_mae)")
    pre.add_argument("--epochs", type=int, default=300, help="epochs (default 300, as the official pretraining)")
    pre.add_argument("--batch-size", type=int, default=32, help="clouds per batch (default 32; official 128)")
    pre.add_argument("--points", type=int, default=1024, help="points sampled per cloud (default 1024)")
    pre.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    pre.add_argument("--num-workers", type=int, default=0, help="data loader workers (default 0)")


def _add_pretrain_diffusion(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser(
        "pretrain-diffusion", help="pretrain a small diffusion base on synthetic shapes (writes a diffusers folder)",
        description="Train the whole UNet of a small diffusion base (default pixel_demo: pixel space, no VAE) on "
        "synthetic images of one coloured shape ('a red circle') at ONE resolution, and write it to OUTPUT as a "
        "diffusers folder, loadable as weights: OUTPUT by the generation configs (e.g. "
        "configs/resadapter_shapes_demo.yaml). Stops at --epochs, --steps or --minutes, whichever comes first; "
        "the learning rate decays linearly to 0 over --steps (or --epochs) and the written weights are the "
        "moving average (--ema-decay) of the UNet's.",
    )
    pre.add_argument("--output", required=True, help="the diffusers folder to write (atomically, when training ends)")
    pre.add_argument("--backbone", default="pixel_demo", help="registered diffusion base (default pixel_demo)")
    pre.add_argument("--resolution", type=int, default=32, help="training image size in pixels (default 32)")
    pre.add_argument("--minutes", type=float, help="wall-clock budget of training (default: none)")
    pre.add_argument("--epochs", type=int, default=1000, help="epochs of --num-samples images (default 1000)")
    pre.add_argument("--steps", type=int, default=-1, help="optimizer steps (default: no limit)")
    pre.add_argument("--ema-decay", type=float, default=0.999,
                     help="cap of the weights' moving average that is written (default 0.999; 0: last weights)")
    pre.add_argument("--snr-gamma", type=float, help="Min-SNR-gamma loss weighting (default: none)")
    pre.add_argument("--num-samples", type=int, default=8192, help="images per epoch (default 8192)")
    pre.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    pre.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    pre.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pre.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def _add_predict_points(sub: argparse._SubParsersAction) -> None:
    points = sub.add_parser(
        "predict-points", help="classify or part-segment folders of point clouds / meshes with a point checkpoint",
        description="Run a point classification checkpoint (one predictions.csv) or a part segmentation checkpoint "
        "(one coloured .ply or .csv per input) over a folder, glob or file of .ply/.obj/.off/.npy/.xyz/.txt/.pts. "
        "Finished outputs are skipped on a rerun; bad files are listed in failed.csv (exit code 1 if any failed).",
    )
    points.add_argument("--checkpoint", required=True, help="adapter .safetensors (or Lightning .ckpt) of a point task")
    points.add_argument("--input", required=True, help="folder (searched recursively), glob or one file")
    points.add_argument("--output", required=True, help="output folder")
    points.add_argument("--num-points", type=int, default=1024, help="points per cloud fed to the model (default 1024)")
    points.add_argument("--batch-size", type=int, default=8, help="clouds per forward pass (default 8)")
    points.add_argument("--format", choices=("ply", "csv"), default="ply",
                        help="part segmentation output (default ply)")
    points.add_argument("--category", type=int, help="part segmentation: the object category of every input "
                        "(default: each cloud's most likely category)")
    points.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    points.add_argument("--weights", help="backbone weights to use instead of the path stored in the checkpoint")
    points.add_argument("--overwrite", action="store_true", help="redo inputs already done")


def _add_make_shapes(sub: argparse._SubParsersAction) -> None:
    shapes = sub.add_parser(
        "make-shapes", help="write a synthetic labelled point-cloud set (ModelNet folder layout), for offline runs",
        description="Write OUTPUT/<class>/{train,test}/NNNN.npy point clouds of primitive and composed shapes "
        "(sphere, cube, ..., table, mug, lamp, chair, rocket) with random deformations, noise and partial views, "
        "per-point part labels NNNN_parts.npy, classes.txt and parts.json. Read it with "
        "vadapt.data.points.PointFolderDataModule (parts: true for part segmentation).",
    )
    shapes.add_argument("--output", required=True, help="folder to write (created)")
    shapes.add_argument("--classes", type=int, default=10, help="number of shape classes, 1 to 12 (default 10)")
    shapes.add_argument("--per-class", type=int, default=50,
                        help="samples per class; 20%% of them go to test/ (default 50)")
    shapes.add_argument("--points", type=int, default=2048, help="points per sample (default 2048)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    shapes.add_argument("--no-parts", action="store_true", help="do not write the part labels (*_parts.npy)")
    shapes.add_argument("--format", choices=("npy", "ply"), default="npy", help="point file format (default npy)")


def _add_make_endoscopy(sub: argparse._SubParsersAction) -> None:
    endo = sub.add_parser(
        "make-endoscopy", help="write synthetic endoscopy videos with true depth, poses and intrinsics, for offline "
        "depth training",
        description="Render SEQUENCES videos of a textured tube seen from a camera moving along it, the light at the "
        "camera (inverse-square falloff, specular highlights), each with its own focal length and principal point, "
        "as OUTPUT/seq_NNN/{images/*.png, depth/*.npy, intrinsics.txt, poses.txt} (the depth-video folder layout "
        "vadapt.data.MonocularVideoDataModule reads). Depth and poses are in centimetres.",
    )
    endo.add_argument("--output", required=True, help="folder to write (created)")
    endo.add_argument("--sequences", type=int, default=8, help="number of videos (default 8)")
    endo.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    endo.add_argument("--size", type=int, nargs=2, default=(128, 160), metavar=("H", "W"),
                      help="frame size (default 128 160)")
    endo.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    endo.add_argument("--no-shading", action="store_true",
                      help="albedo only (no light): brightness constancy holds exactly")
    endo.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    # the app (with gradio) is imported only when the subcommand runs (run_demo)
    demo = sub.add_parser("demo", help="interactive web demo of adapter checkpoints (Gradio; needs the [app] extra)",
                          description="Serve a local web page to try adapter checkpoints: segment, prompt (SAM), "
                          "change detection, batch, 3D point clouds, generation. The built-in demo checkpoints "
                          "are always offered, beside those of --checkpoints folders (unless --no-builtin).")
    demo.add_argument("--checkpoints", action="append", metavar="DIR",
                      help="folder searched (recursively) for adapter .safetensors, offered beside the built-in "
                      "demo checkpoints (data/demo, built on first start if absent); repeatable")
    demo.add_argument("--no-builtin", action="store_true",
                      help="offer only the --checkpoints folders' checkpoints, not the built-in demo ones")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.add_argument("--share", action="store_true",
                      help="also open a public *.gradio.live link (off by default; needs internet)")
    demo.add_argument("--max-upload-mb", type=float, default=100.0, help="largest uploaded file in MB (default 100)")
    demo.add_argument("--max-pixels", type=int, default=4096 * 4096,
                      help="largest image in pixels, height x width (default 16,777,216)")


def _add_infer(sub: argparse._SubParsersAction) -> None:
    infer = sub.add_parser(
        "infer", help="predict folders of images of any size with an adapter checkpoint (tiled, resumable)",
        description="Predict every image of a folder (or glob, or file) into --output, mirroring sub-folders. "
        "Large images are tiled with overlap blending and read/written window by window; GeoTIFFs keep their "
        "georeference. Finished outputs are skipped on a rerun; bad files are reported in failed.csv and the "
        "run goes on (exit code 1 if any failed).",
    )
    infer.add_argument("--checkpoint", required=True, help="adapter .safetensors (or Lightning .ckpt)")
    infer.add_argument("--input", help="folder (searched recursively), glob ('scenes/**/*.tif') or one file")
    infer.add_argument("--input-a", help="change detection: folder of 'before' images")
    infer.add_argument("--input-b", help="change detection: folder of 'after' images (paired by name)")
    infer.add_argument("--output", required=True, help="output folder")
    _add_settings(infer)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per field of InferOptions (no torch imported): name, type, choices, default and help all come
    from the dataclass, so the command line and ``vadapt.infer()`` cannot disagree."""
    from dataclasses import MISSING, fields

    from vadapt.inference.options import TUPLE_ITEMS, InferOptions, field_help, setting_type

    texts = field_help()
    for f in fields(InferOptions):
        kind, _, choices = setting_type(f.name)
        default = f.default if f.default is not MISSING else f.default_factory()
        text = texts.get(f.name, "").removesuffix(".")
        if kind is bool:  # a flag that turns the setting on, or off where it is on by default
            flag = f.metadata.get("flag", f"--no-{f.name}" if default else f"--{f.name.replace('_', '-')}")
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                                help=f"turn off: {text} (on by default)" if default else text)
            continue
        extra: dict = {"nargs": "+", "type": TUPLE_ITEMS[f.name]} if kind is tuple else {"type": kind}
        if choices:
            extra["choices"] = choices
        shown = "" if default is None else f" (default {default})"
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=default, help=f"{text}{shown}",
                            **extra)


def _version() -> str:
    import vadapt

    return vadapt.__version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user's mistake (a missing or bad file, a bad value) is one ``error: ...`` line on
    stderr and exit code 2, never a traceback (see :func:`user_error`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _answer_user_errors(run_lightning_checked, argv)
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    return _answer_user_errors(run_command, args)


def _answer_user_errors(run: Callable[[Any], int | None], arg: Any) -> int:
    try:
        return run(arg) or 0
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise  # a bug: its traceback is what we need
        print(f"error: {message}", file=sys.stderr)
        return 2


#: modules whose exception classes mean "the user's file or value is wrong"; looked up in ``sys.modules`` only, so
#: answering an error imports nothing (an exception of a module never imported cannot have been raised)
USER_ERROR_CLASSES = (
    ("vadapt.data.io", "DataError"),
    ("vadapt.weights", "WeightsMismatchError"),
    ("safetensors", "SafetensorError"),
    ("yaml", "YAMLError"),
    ("jsonargparse", "ArgumentError"),
)
MAX_ERROR_LINES = 8


def user_error(exc: BaseException) -> str | None:
    """The message to show for ``exc`` when it is the user's mistake (a missing, unreadable or wrong file, a bad
    value, a checkpoint vadapt refuses: ``AdapterCheckpointError`` and ``WeightsNotFoundError`` are among these),
    or None for anything else. Long messages are cut to their first lines."""
    kinds: list[type[BaseException]] = [FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                                        PermissionError, ValueError]
    for module, name in USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            kinds.append(cls)
    if not isinstance(exc, tuple(kinds)):
        return None
    if type(exc).__module__.startswith("jsonargparse") or isinstance(exc, argparse.ArgumentError):
        text = _argument_report(str(exc))
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror and len(exc.args) == 2:
        text = f"{exc.filename}: {exc.strerror}"  # raised by the OS, e.g. open(): "[Errno 2] No such ..."
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[:MAX_ERROR_LINES], f"... ({len(lines) - MAX_ERROR_LINES} more lines)"]
    return "\n".join(lines)


ARGUMENT_REPORT_NOISE = ("Does not validate", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>",
                         "Given value")


def _argument_report(text: str) -> str:
    """jsonargparse's nested type-check report as one line: the keys and classes down to the cause."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(ARGUMENT_REPORT_NOISE):
            continue
        if line.startswith('Parser key "') and line.endswith('":'):
            line = line[len('Parser key "'):-2] + ":"
        elif line.startswith("- Problem with given class_path '") and line.endswith("':"):
            line = line[len("- Problem with given class_path '"):-2] + ":"
        elif line.startswith('Parser key "'):
            line = line[len('Parser key "'):].replace('":', ":", 1)
        parts.append(line)
    return " ".join(parts) or text


def existing_file(path: str | None, flag: str) -> None:
    """Refuse a ``flag`` naming no file before anything heavy is imported."""
    if path is not None and not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "not found"
        raise FileNotFoundError(f"{flag.lstrip('-')} {what}: {path}")


def output_folder(path: str, flag: str = "--output") -> None:
    """Refuse an output folder that is an existing file before any work."""
    if Path(path).exists() and not Path(path).is_dir():
        raise NotADirectoryError(f"{flag} {path} is an existing file; give a folder")


def run_command(args: argparse.Namespace) -> int:
    if args.command == "list":
        print(list_entries(args.what, args.all))
    elif args.command == "params":
        existing_file(args.config, "--config")
        import torch

        from vadapt.loading import task_from_config_file
        from vadapt.params import format_table

        try:
            with torch.device("meta"):  # counts need shapes only: no weight file, no memory
                counts = task_from_config_file(args.config, weights=None).parameter_counts()
        except Exception:  # noqa: BLE001 - a constructor that reads values (SAM 2's Hiera calls .item(), which
            # hydra re-raises as its own error): build on the CPU, where a real error shows itself
            counts = task_from_config_file(args.config, weights=None).parameter_counts()
        print(json.dumps(counts) if args.json else format_table(counts))
    elif args.command == "stats":
        existing_file(args.config, "--config")
        from vadapt.data.stats import print_band_stats

        print_band_stats(args.config, args.digits)
    elif args.command == "export":
        existing_file(args.checkpoint, "--checkpoint")
        if Path(args.output).is_dir():
            raise IsADirectoryError(f"--output {args.output} is a folder; give the file to write")
        from vadapt.export import export

        for line in export(args.checkpoint, args.output, merge=args.merge, onnx=args.onnx,
                           weights=args.weights, input_size=tuple(args.input_size)):
            print(line)
    elif args.command == "infer":
        return run_infer(args)
    elif args.command == "demo":
        return run_demo(args)
    elif args.command == "predict-points":
        return run_predict_points(args)
    elif args.command == "make-shapes":
        return run_make_shapes(args)
    elif args.command == "make-endoscopy":
        return run_make_endoscopy(args)
    elif args.command == "pretrain-points":
        return run_pretrain_points(args)
    elif args.command == "pretrain-diffusion":
        return run_pretrain_diffusion(args)
    elif args.command == "generate":
        return run_generate(args)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    existing_file(args.checkpoint, "--checkpoint")
    existing_file(args.config, "--config")
    output_folder(args.output)
    from vadapt.inference.generate import generate

    report = generate(args.output, args.prompt, args.height, args.width, config=args.config,
                      checkpoint=args.checkpoint, weights=args.weights, seed=args.seed,
                      num_images=args.num_images, steps=args.steps, guidance=args.guidance,
                      negative_prompt=args.negative_prompt, sampler=args.sampler, device=args.device,
                      progress=not args.quiet, first_frame=args.first_frame, reference=args.reference,
                      num_frames=args.num_frames, num_views=args.num_views, video_format=args.video_format,
                      fps=args.fps)
    print(report.summary())
    return 0


def run_predict_points(args: argparse.Namespace) -> int:
    existing_file(args.checkpoint, "--checkpoint")
    output_folder(args.output)
    from vadapt.inference.points import predict_points

    report = predict_points(args.checkpoint, args.input, args.output, num_points=args.num_points,
                            weights=args.weights, batch_size=args.batch_size, format=args.format,
                            category=args.category, device=args.device, overwrite=args.overwrite)
    print(report.summary())
    if report.failed:
        print(f"{len(report.failed)} failed: see {Path(args.output) / 'failed.csv'}", file=sys.stderr)
    return 0 if report.ok else 1


def run_make_shapes(args: argparse.Namespace) -> int:
    output_folder(args.output)
    from vadapt.data.shapes import make_shapes

    done = make_shapes(args.output, classes=args.classes, per_class=args.per_class, points=args.points,
                       seed=args.seed, parts=not args.no_parts, format=args.format)
    parts = f", {done['num_parts']} part labels" if done["num_parts"] else ""
    print(f"wrote {len(done['classes'])} classes x ({done['train']} train + {done['test']} test) clouds of "
          f"{done['points']} points{parts} to {done['output']}")
    return 0


def run_make_endoscopy(args: argparse.Namespace) -> int:
    output_folder(args.output)
    from vadapt.data.endoscopy import make_endoscopy

    folders = make_endoscopy(args.output, sequences=args.sequences, frames=args.frames, size=tuple(args.size),
                             seed=args.seed, shading=not args.no_shading, progress=not args.quiet)
    print(f"wrote {len(folders)} sequences x {args.frames} frames of {args.size[0]}x{args.size[1]} with depth, "
          f"poses and intrinsics to {args.output}")
    return 0


def run_pretrain_points(args: argparse.Namespace) -> int:
    from vadapt.tasks.point_pretrain import pretrain_points

    path = pretrain_points(args.data, args.output, backbone=args.backbone, epochs=args.epochs,
                           batch_size=args.batch_size, points=args.points, lr=args.lr, num_workers=args.num_workers)
    print(f"pretrained encoder: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def run_pretrain_diffusion(args: argparse.Namespace) -> int:
    output_folder(args.output)
    from vadapt.tasks.diffusion_pretrain import pretrain_diffusion_base

    path = pretrain_diffusion_base(args.output, backbone=args.backbone, resolution=args.resolution,
                                   epochs=args.epochs, max_minutes=args.minutes, batch_size=args.batch_size,
                                   lr=args.lr, seed=args.seed, num_samples=args.num_samples,
                                   max_steps=args.steps, ema_decay=args.ema_decay or None,
                                   snr_gamma=args.snr_gamma, overwrite=args.overwrite)
    print(f"pretrained diffusion base: {path} (use it as weights: {path})")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    for folder in args.checkpoints or ():
        if not Path(folder).is_dir():
            what = "a file, not a folder" if Path(folder).exists() else "not found"
            raise NotADirectoryError(f"--checkpoints {folder}: {what}")
    try:
        import gradio  # noqa: F401

        from vadapt.app.main import run
    except ImportError as exc:
        print(f"error: the demo needs Gradio ({exc}); install it with: pip install -e \".[app]\"", file=sys.stderr)
        return 2
    return run(args)


def run_infer(args: argparse.Namespace) -> int:
    existing_file(args.checkpoint, "--checkpoint")
    output_folder(args.output)
    from dataclasses import fields

    from vadapt.inference import InferOptions, infer

    options = InferOptions(**{f.name: getattr(args, f.name) for f in fields(InferOptions)})
    report = infer(args.checkpoint, args.output, input=args.input, input_a=args.input_a, input_b=args.input_b,
                   options=options)
    print(report.summary())
    print(f"preprocessing: {report.preprocessing}")
    _print_warnings(report.warnings)
    if report.failed:
        print(f"{len(report.failed)} failed: see {args.output}/failed*.csv", file=sys.stderr)
    return 0 if report.ok else 1


def _drop_lightning_tips() -> None:
    """Keep Lightning's advertisements ("Tip: ... try installing litlogger") out of the user's terminal."""
    import logging

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).lstrip().startswith("\N{ELECTRIC LIGHT BULB} Tip:")

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoTips())


def _print_warnings(warnings: list[tuple[str, str]]) -> None:
    """One line per kind of warning (a pixel-size note for 500 files is one line), with a count and an example."""
    kinds: dict[str, tuple[str, list[str]]] = {}  # kind -> (its first text, the files)
    for name, reason in warnings:
        kind = reason.split(" vs ")[0] if reason.startswith("pixel size") else reason
        kinds.setdefault(kind, (reason, []))[1].append(name)
    for text, names in kinds.values():
        print(f"note: {text} ({names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''})")


def run_lightning_checked(argv: list[str]) -> None:
    """``vadapt fit | validate | test | predict``: the short help, or the config checked in a moment (the mistakes
    users make most, answered in one sentence, see :mod:`vadapt.config_schema`), then LightningCLI. ``--help-all``
    is LightningCLI's own ``--help``."""
    from vadapt.config_schema import check_command, short_help

    command, rest = argv[0], argv[1:]
    if "--help-all" in rest:
        return run_lightning([command, *("--help" if a == "--help-all" else a for a in rest)])
    if "-h" in rest or "--help" in rest:
        print(short_help(command, rest))
        return None
    check_command(rest)
    return run_lightning(argv)


def run_lightning(argv: list[str]) -> None:
    import warnings

    from lightning import LightningDataModule

    from vadapt.adapters import enable_adapter_configs
    from vadapt.data.io import find_data_error
    from vadapt.lightning_cli import VadaptCLI
    from vadapt.memory import return_freed_memory_to_os
    from vadapt.tasks.base import BaseTask

    enable_adapter_configs()
    _drop_lightning_tips()
    return_freed_memory_to_os()  # see vadapt/memory.py: keeps the resident memory at what the step needs
    # main() hands LightningCLI the command line explicitly (so tests can call it); not a mistake to warn about
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    try:
        VadaptCLI(
            BaseTask,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # a bad argument raises: answered in one line below
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
        import vadapt.composites  # noqa: F401  (registers the composite backbones)
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
