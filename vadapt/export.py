"""``vadapt export``: adapter checkpoints from Lightning checkpoints, merged weights, ONNX."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from vadapt.adapters import merge_adapter
from vadapt.checkpoint import save_adapter
from vadapt.loading import load_task


def export(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    merge: bool = False,
    onnx: bool = False,
    weights: str | None = None,
    input_size: tuple[int, int] = (224, 224),
) -> Iterator[str]:
    """Write ``output`` from ``checkpoint``; yields one line per step for the CLI to print.

    * default: the adapter checkpoint (trained tensors + manifest);
    * ``merge``: LoRA/DoRA folded into the backbone, full weights (needs no backbone file to load);
    * ``onnx``: the merged model as ONNX (input ``image`` ``(B, bands, H, W)`` raw values with ``H, W`` fixed
      to ``input_size``, output ``logits``), checked against PyTorch with onnxruntime.
    """
    task = load_task(checkpoint, weights).eval()
    yield f"loaded {checkpoint}: {task.parameter_counts()['trainable']:,} trained parameters"
    if merge or onnx:
        merge_adapter(task.backbone, task.adapter_config)
        yield "merged the adapter into the backbone weights"
    if onnx:
        max_diff = export_onnx(task, output, input_size)
        yield f"wrote {output} (onnxruntime vs PyTorch max abs difference {max_diff:.2e})"
        return
    path = save_adapter(task, output, merged=merge)
    yield f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)"


def export_onnx(model: torch.nn.Module, output: str | os.PathLike, input_size: tuple[int, int],
                tolerance: float = 1e-3) -> float:
    """Export ``model`` (image -> logits) to ONNX and return onnxruntime's max deviation from PyTorch."""
    import numpy as np
    import onnxruntime

    bands = len(model.backbone.bands)
    example = torch.rand(2, bands, *input_size) * model.input_std + model.input_mean
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with torch.no_grad():
        expected = model(example).numpy()
        # torch.export-based exporter: handles adaptive pooling and position-embedding resampling at a static
        # spatial size (the TorchScript exporter does not); the batch dimension stays dynamic
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamo=True, dynamic_shapes=({0: torch.export.Dim.AUTO},), verbose=False)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": example.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        tmp.unlink()
        raise RuntimeError(f"ONNX export deviates from PyTorch by {diff:.2e} (> {tolerance}); not written")
    os.replace(tmp, output)
    return diff
