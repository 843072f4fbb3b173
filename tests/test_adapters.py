"""One table of (backbone, adapter config) cases; every generic adapter test runs on every row (peft style)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vadapt.adapters import (
    ADAPTERS,
    BottleneckConfig,
    CloudAdapterConfig,
    EarthAdapterConfig,
    LoraConfig,
    QVDoraConfig,
    SaltConfig,
    VPTConfig,
    apply_adapter,
    can_merge,
    merge_adapter,
)
from vadapt.backbones import BACKBONES, Backbone, create_backbone

CASES = {
    "lora-dinov2": ("dinov2_test", lambda: LoraConfig(r=4, lora_alpha=8)),
    "dora-dinov2": ("dinov2_test", lambda: LoraConfig(r=4, use_dora=True)),
    "lora-mlp-vit16": ("vit_patch16_test", lambda: LoraConfig(r=2, target_modules=["fc1", "fc2"])),
    "lora-sam": ("sam_test", lambda: LoraConfig(r=4)),
    "dora-sam2": ("sam2_test", lambda: LoraConfig(r=2, use_dora=True)),
    "lora-clip": ("clip_test", lambda: LoraConfig(r=4)),
    "lora-effnet": ("efficientnet_lite0_test", lambda: LoraConfig(r=4)),
    "bottleneck-parallel-dinov2": ("dinov2_test", lambda: BottleneckConfig(adapter_dim=8)),
    "bottleneck-sequential-sam": ("sam_test", lambda: BottleneckConfig(adapter_dim=8, adapter_mode="sequential")),
    "bottleneck-sam2": ("sam2_test", lambda: BottleneckConfig(adapter_dim=8)),
    "bottleneck-clip": ("clip_test", lambda: BottleneckConfig(adapter_dim=8)),
    "bottleneck-effnet": ("efficientnet_lite0_test", lambda: BottleneckConfig(adapter_dim=8)),
    "vpt-dinov2": ("dinov2_test", lambda: VPTConfig(num_tokens=4)),
    "vpt-clip": ("clip_test", lambda: VPTConfig(num_tokens=4, layers=[0, 2])),
    "earth-dinov2": ("dinov2_test", lambda: EarthAdapterConfig(adapter_dim=8)),
    "earth-vit16": ("vit_patch16_test", lambda: EarthAdapterConfig(adapter_dim=8, layers=[1, 3], fft_layers=[3])),
    "earth-clip": ("clip_test", lambda: EarthAdapterConfig(adapter_dim=8, cutoff_ratio=0.2)),
    "earth-sam": ("sam_test", lambda: EarthAdapterConfig(adapter_dim=8)),
    "earth-sam2": ("sam2_test", lambda: EarthAdapterConfig(adapter_dim=4)),
    "cloud_adapter-dinov2": ("dinov2_test", lambda: CloudAdapterConfig(
        context_dim=8, context_depth=2, num_heads=2, head_dim=8, norm_groups=4, rank=4)),
    "cloud_adapter-clip": ("clip_test", lambda: CloudAdapterConfig(
        context_dim=8, context_depth=2, num_heads=2, head_dim=8, norm_groups=4, rank=4, layers=[1, 3])),
    "cloud_adapter-sam": ("sam_test", lambda: CloudAdapterConfig(
        context_dim=8, context_depth=2, num_heads=2, head_dim=8, norm_groups=4, rank=4)),
    "cloud_adapter-sam2": ("sam2_test", lambda: CloudAdapterConfig(
        context_dim=8, context_depth=2, num_heads=2, head_dim=8, norm_groups=4, rank=None)),
    "salt-dinov2": ("dinov2_test", lambda: SaltConfig(r=4, lora_r=2)),
    "salt-sam": ("sam_test", lambda: SaltConfig(
        r=8, lora_r=4, target_modules=["attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"])),
    "qv_dora-sam": ("sam_test", lambda: QVDoraConfig()),
    "qv_dora-sam2": ("sam2_test", lambda: QVDoraConfig(r=2)),
}
CASES = {k: v for k, v in CASES.items() if v[0] in BACKBONES}
IDS = list(CASES)
ADAPTER_NAME_PARTS = ("lora_", "adapter.", "prompt")


def build(case: str):
    name, make_config = CASES[case]
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    config = make_config()
    return backbone, config


def trainable_names(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("case", IDS)
def test_only_adapter_parameters_train(case):
    backbone, config = build(case)
    apply_adapter(backbone, config)
    names = trainable_names(backbone)
    assert names, "the adapter added no trainable parameter"
    assert all(any(part in n for part in ADAPTER_NAME_PARTS) for n in names), names
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) < 0.5 * sum(
        p.numel() for p in backbone.parameters()
    )


@pytest.mark.parametrize("case", [c for c in IDS if not c.startswith("vpt")])
def test_adapter_starts_as_identity(case):
    backbone, config = build(case)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = backbone(x)
        apply_adapter(backbone, config)
        after = backbone(x)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", IDS)
def test_training_moves_only_the_adapter_and_loss_falls(case):
    backbone, config = build(case)
    apply_adapter(backbone, config)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if k not in set(trainable_names(backbone))}
    adapter_before = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
    head = nn.Conv2d(backbone.out_channels[-1], 2, 1)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 2, (2,) + backbone(x)[-1].shape[-2:])
    backbone.train()
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(head(backbone(x)[-1]), target)
        optimizer.zero_grad()
        loss.backward()
        for n, p in backbone.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in backbone.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen tensor {k} changed"
    moved = [n for n, p in backbone.named_parameters() if p.requires_grad and not torch.equal(p, adapter_before[n])]
    assert moved, "no adapter parameter was updated"


@pytest.mark.parametrize("case", [c for c in IDS if can_merge(CASES[c][1]())])
def test_merged_equals_unmerged(case):
    from peft.tuners.tuners_utils import BaseTunerLayer

    backbone, config = build(case)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = backbone(x)
    apply_adapter(backbone, config)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
        unmerged = backbone(x)
        merge_adapter(backbone, config)
        merged = backbone(x)
    assert not any(isinstance(m, BaseTunerLayer) for m in backbone.modules())
    assert not trainable_names(backbone)
    assert max((a - b).abs().max() for a, b in zip(plain, unmerged)) > 1e-3, "the update did nothing"
    for a, b in zip(unmerged, merged):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["vpt-dinov2"] + [c for c in IDS if "bottleneck" in c][:1])
def test_unmergeable_methods_say_so(case):
    backbone, config = build(case)
    apply_adapter(backbone, config)
    with pytest.raises(ValueError, match="cannot be folded"):
        merge_adapter(backbone, config)


def test_no_match_lists_targets_and_existing_names():
    backbone = create_backbone("dinov2_test")
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj'\].*qkv.*blocks\.0\.attn\.qkv"):
        apply_adapter(backbone, LoraConfig(target_modules=["q_proj"]))


def test_vpt_refuses_grid_layout_backbones():
    with pytest.raises(ValueError, match="VPT prepends tokens"):
        apply_adapter(create_backbone("sam_test"), VPTConfig())


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: LoraConfig(r=0), "LoraConfig.r"),
        (lambda: LoraConfig(lora_dropout=1.5), "lora_dropout"),
        (lambda: BottleneckConfig(adapter_mode="serial"), "adapter_mode"),
        (lambda: VPTConfig(target_modules=["qkv"]), "layers"),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_registry_lists_methods():
    assert set(ADAPTERS.names()) >= {"lora", "bottleneck", "vpt"}


def _grads(backbone, config_grad_ckpt: bool, no_grad_prefix: bool):
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_test")
    # LoRA only in the last two blocks: the first two are a frozen prefix that can run without autograd
    apply_adapter(backbone, LoraConfig(r=4, target_modules=r"blocks\.[23]\.attn\.qkv"))
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    backbone.grad_checkpointing = config_grad_ckpt
    if not no_grad_prefix:
        backbone.first_trainable_block = lambda: 0
    backbone.train()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    sum(f.square().mean() for f in backbone(x)).backward()
    return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.requires_grad}


def test_no_grad_prefix_and_checkpointing_give_the_same_gradients():
    backbone = create_backbone("dinov2_test")
    reference = _grads(backbone, config_grad_ckpt=False, no_grad_prefix=False)
    assert len(reference) == 4 and all(g.abs().sum() > 0 for g in reference.values())
    for ckpt, prefix in [(False, True), (True, True), (True, False)]:
        got = _grads(backbone, ckpt, prefix)
        for n in reference:
            torch.testing.assert_close(got[n], reference[n], atol=1e-6, rtol=1e-5)


class _SplitAttentionBlock(nn.Module):
    """A pre-norm attention block with separate q / k / v projections (as in HF/Eva-style ViTs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        att = nn.functional.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))
        return x + self.proj(att)


class _SplitQKVBackbone(Backbone):
    """A minimal backbone of split-projection blocks: adapters attach by module name, whatever the family."""

    stem_conv = "embed"

    def __init__(self, dim: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.name = "split_qkv_test"
        self.model = nn.Module()
        self.model.embed = nn.Conv2d(3, dim, 4, 4)
        self.model.blocks = nn.ModuleList(_SplitAttentionBlock(dim) for _ in range(depth))
        self.out_channels, self.strides, self.patch_size, self.pad_multiple = [dim], [4], 4, 4
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.model.embed(x)
        b, c, h, w = tokens.shape
        out = self.run_blocks(tokens.flatten(2).transpose(1, 2), [len(self.blocks) - 1])[0]
        return [out.transpose(1, 2).reshape(b, c, h, w)]


def test_lora_on_split_q_v_projections_leaves_k_alone_and_merges():
    backbone = _SplitQKVBackbone()
    x = torch.randn(2, 3, 16, 20)
    apply_adapter(backbone, LoraConfig(r=2, target_modules=["q", "v"]))
    names = trainable_names(backbone)
    assert len(names) == 2 * 2 * 2 and not any(".k." in n for n in names)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 2 * 2 * (2 * 16 + 16 * 2)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
        unmerged = backbone(x)
        merge_adapter(backbone, LoraConfig())
        torch.testing.assert_close(backbone(x)[0], unmerged[0], atol=1e-5, rtol=1e-5)
