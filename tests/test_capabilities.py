"""Tasks declare what they can do (``TaskCapabilities``); the app, ``vadapt infer``, ``predict-points`` and
``generate`` dispatch on that declaration, stored in every adapter checkpoint, never on class names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vadapt.tasks
from vadapt.app.checkpoints import kinds_of
from vadapt.checkpoint import AdapterCheckpointError, read_manifest, save_adapter
from vadapt.contracts import TaskCapabilities
from vadapt.inference.engine import Predictor
from vadapt.inference.points import task_kind
from vadapt.loading import capabilities_of, known_task_classes
from vadapt.tasks import PointClassificationTask, SemanticSegmentationTask

#: the tabs each shipped task (with these init args) belongs to
EXPECTED_KINDS = [
    ("SemanticSegmentationTask", {}, {"segment"}),
    ("ChangeDetectionTask", {}, {"change"}),
    ("PromptableSegmentationTask", {"prompting": "sampled"}, {"prompt"}),
    ("PromptableSegmentationTask", {"prompting": "automatic"}, {"prompt", "segment"}),
    ("PromptableSegmentationTask", {"prompting": "learned"}, {"prompt", "segment"}),
    ("PointClassificationTask", {}, {"points"}),
    ("PartSegmentationTask", {}, {"points"}),
    ("PointMAEPretrainTask", {}, set()),
    ("DiffusionAdapterTask", {}, {"generate"}),
]


def test_every_shipped_task_declares_valid_capabilities():
    fields = {f.name: f.type for f in dataclasses.fields(TaskCapabilities)}
    assert set(fields) == {"input", "output", "tiles", "prompts"}
    for path in vadapt.tasks.TASKS:
        cls = getattr(vadapt.tasks, path.rpartition(".")[2])
        caps = cls.capabilities_for({})
        assert isinstance(caps, TaskCapabilities), path
        assert TaskCapabilities.from_dict(caps.to_dict()) == caps
    # every task named in EXPECTED_KINDS is shipped (a new task is checked above without needing a row)
    assert {n for n, *_ in EXPECTED_KINDS} <= {p.rpartition(".")[2] for p in vadapt.tasks.TASKS}


@pytest.mark.parametrize(("name", "init_args", "kinds"), EXPECTED_KINDS)
def test_app_tabs_follow_capabilities_stored_or_declared(name, init_args, kinds):
    cls = getattr(vadapt.tasks, name)
    path = f"{cls.__module__}.{cls.__qualname__}"
    legacy = {"task": path, "init_args": init_args}  # a checkpoint written before capabilities were stored
    stored = {**legacy, "capabilities": cls.capabilities_for(init_args).to_dict()}
    assert kinds_of(legacy) == kinds_of(stored) == frozenset(kinds)
    assert known_task_classes()[path] is cls


def test_a_new_task_needs_no_edit_of_the_faces():
    # a task the app has never heard of, declaring per-pixel classes on tiles, lands in the Segment tab
    manifest = {"task": "my_lab.tasks.WetlandTask", "init_args": {},
                "capabilities": TaskCapabilities("image", "class_map", tiles=True).to_dict()}
    assert kinds_of(manifest) == {"segment"}
    manifest["capabilities"] = TaskCapabilities("point_cloud", "point_labels").to_dict()
    assert kinds_of(manifest) == {"points"}


def test_unknown_task_without_capabilities_and_unknown_fields_are_refused():
    with pytest.raises(AdapterCheckpointError, match="not one of vadapt's tasks"):
        capabilities_of({"task": "this.AnyModule", "init_args": {}})
    with pytest.raises(ValueError, match="unknown task capabilities"):
        TaskCapabilities.from_dict({"input": "image", "output": "class_map", "colour": "red"})


def test_checkpoint_stores_capabilities_and_faces_read_them(tmp_path, weights):
    seg = SemanticSegmentationTask(backbone="vit_patch16_test", num_classes=3)
    path = save_adapter(seg, tmp_path / "seg.safetensors")
    assert read_manifest(path)["capabilities"] == seg.capabilities.to_dict()
    assert Predictor(seg.eval(), "cpu", merge=False).inputs == 1

    points = PointClassificationTask(backbone="point_mae_test", weights=weights, num_classes=3, head_hidden=16)
    assert task_kind(points) == "classification"
    with pytest.raises(ValueError, match="predict-points"):  # vadapt infer names the command that runs it
        Predictor(points.eval(), "cpu")
    with pytest.raises(ValueError, match="runs checkpoints that label point clouds"):
        task_kind(seg)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(seg.class_logits(x), seg(x))  # the default: the task's forward
