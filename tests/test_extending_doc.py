"""docs/extending.md's worked examples run as written: the SSF adapter, the ResNet backbone family and the image
classification task are assembled from the page's code blocks and exercised in a fresh process (the registries
refuse a name registered twice, so each example gets its own interpreter)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

DOC = Path(__file__).parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n# file: (?P<file>\S+)\n(?P<code>.*?)```", re.S)


def module_of(files: list[str], local: dict[str, str]) -> str:
    """The named blocks as one script: the package-relative imports of the page become absolute (``local``) or go
    (names defined by an earlier block of the same script)."""
    blocks = {m["file"]: m["code"] for m in BLOCK.finditer(DOC.read_text())}
    missing = [f for f in files if f not in blocks]
    assert not missing, f"docs/extending.md has no block for {missing}"
    lines = ["from __future__ import annotations"]
    for name in files:
        for line in blocks[name].splitlines():
            if line.startswith("from __future__"):
                continue
            relative = re.match(r"from (\.\w*) import", line)
            if relative:
                if relative[1] not in local:
                    continue  # defined above in this script
                line = line.replace(f"from {relative[1]} import", f"from {local[relative[1]]} import", 1)
            lines.append(line)
    return "\n".join(lines)


def run(script: str, tmp_path: Path) -> str:
    path = tmp_path / "example.py"
    path.write_text(script)
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_ssf_adapter_example(tmp_path):
    code = module_of(["vadapt/adapters/ssf/config.py", "vadapt/adapters/ssf/layer.py", "vadapt/adapters/ssf/model.py",
                      "vadapt/adapters/ssf/__init__.py"], {})
    check = textwrap.dedent("""
        import torch
        from vadapt.adapters import ADAPTERS, apply_adapter, can_merge, merge_adapter
        from vadapt.backbones import create_backbone

        torch.manual_seed(0)
        backbone, x = create_backbone("dinov2_test"), torch.rand(2, 3, 28, 28)
        frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
        before = backbone(x)[-1]
        apply_adapter(backbone, SSFConfig())
        assert "ssf" in ADAPTERS and can_merge(SSFConfig())
        assert torch.equal(backbone(x)[-1], before), "SSF starts as the frozen model"
        trainable = [p for p in backbone.parameters() if p.requires_grad]
        assert trainable and all(p.ndim == 1 for p in trainable)
        torch.optim.AdamW(trainable, lr=0.1).zero_grad()
        backbone(x)[-1].square().mean().backward()
        torch.optim.AdamW(trainable, lr=0.1).step()
        for name, value in backbone.state_dict().items():  # the frozen weights never move
            key = name.replace(".base.", ".")
            if key in frozen:
                assert torch.equal(value, frozen[key]), name
        adapted = backbone(x)[-1]
        assert not torch.allclose(adapted, before)
        merge_adapter(backbone, SSFConfig())
        assert not any(isinstance(m, SSFLinear) for m in backbone.modules())
        torch.testing.assert_close(backbone(x)[-1], adapted, rtol=1e-4, atol=1e-5)
        print("ssf ok", sum(p.numel() for p in trainable))
    """)
    assert "ssf ok" in run(code + "\n" + check, tmp_path)


def test_resnet_backbone_example(tmp_path):
    code = module_of(["backbones/resnet.py"], {".base": "vadapt.backbones.base"})
    check = textwrap.dedent(f"""
        import timm
        from vadapt.backbones import create_backbone

        backbone = create_backbone("resnet_test", bands=("red", "green", "blue", "nir"))
        maps = backbone(torch.rand(2, 4, 70, 50))
        assert [tuple(m.shape) for m in maps] == [(2, 64, 18, 13), (2, 128, 9, 7), (2, 256, 5, 4), (2, 512, 3, 2)]
        assert not any(p.requires_grad for p in backbone.parameters())
        upstream = timm.create_model("resnet18", num_classes=1000).state_dict()  # timm's file format, fc included
        torch.save(upstream, {str(tmp_path / "resnet18.pth")!r})
        loaded = create_backbone("resnet_test", weights={str(tmp_path / "resnet18.pth")!r})
        assert torch.equal(loaded.model.layer4[1].conv2.weight, upstream["layer4.1.conv2.weight"])
        print("resnet ok")
    """)
    assert "resnet ok" in run(code + "\n" + check, tmp_path)


def test_classification_task_example(tmp_path):
    code = module_of(["tasks/classification.py"], {".base": "vadapt.tasks.base"})
    check = textwrap.dedent("""
        from vadapt.adapters import LoraConfig

        torch.manual_seed(0)
        task = ImageClassificationTask(backbone="efficientnet_lite0_test", num_classes=2, adapter=LoraConfig(r=4),
                                       lr=3e-3)
        assert task.hparams["lr"] == 3e-3 and task.capabilities.output == "class_label"
        frozen = {k: v.clone() for k, v in task.backbone.state_dict().items() if "lora_" not in k}
        image = torch.rand(16, 3, 32, 32)
        label = (image[:, 0].mean((-2, -1)) > image[:, 2].mean((-2, -1))).long()  # red-ish vs blue-ish
        image[label == 1, 0] += 0.5
        optimizer = task.configure_optimizers()["optimizer"]
        losses = []
        for _ in range(30):
            optimizer.zero_grad()
            loss = task._shared_step({"image": image, "label": label}, "train")
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        assert losses[-1] < 0.5 * losses[0], losses
        for name, value in task.backbone.state_dict().items():
            if name in frozen:  # frozen weights and batch-norm statistics alike
                assert torch.equal(value, frozen[name]), name
        print("task ok")
    """)
    assert "task ok" in run(code + "\n" + check, tmp_path)
