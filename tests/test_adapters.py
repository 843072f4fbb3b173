"""One table of (name, tiny backbone, config class, kwargs) cases; every generic adapter test runs on every row
(peft style), so a new adapter gets the whole generic suite by adding a row to ``CASES``.

Generic tests: identity at init, gradients reach only the adapter, the frozen backbone stays bit-identical under
an optimiser step, the adapter's checkpoint state round-trips through safetensors, merged == unmerged (or a
clear refusal). A row opts out of a test only where the property does not apply, with the reason in the row.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from vadapt.adapters import (
    ADAPTERS,
    AdapterConfig,
    BottleneckConfig,
    CloudAdapterConfig,
    DVLoraConfig,
    EarthAdapterConfig,
    I2VAdapterConfig,
    IDPTConfig,
    LoraConfig,
    MVAdapterConfig,
    PointPEFTConfig,
    QVDoraConfig,
    ResAdapterConfig,
    SaltConfig,
    VPTConfig,
    apply_adapter,
    can_merge,
    merge_adapter,
)
from vadapt.adapters.layers import AdapterLayer
from vadapt.backbones import BACKBONES, Backbone, create_backbone

# ---- the table ------------------------------------------------------------------------------------------------

#: the generic tests a row may opt out of (with its reason)
IDENTITY, MERGE = "identity", "merge"

#: trainable parameter names of most methods (peft's ``lora_``, our ``adapter.`` submodules, prompts)
ADAPTER_PARAMS = r"lora_|adapter\.|prompt"
IDPT_PARAMS = r"\.prompt\.|\.prompt_pos$|^model\.cls_(token|pos)$"
POINT_PEFT_PARAMS = r"^point_peft\.|\.prompt$|\.adapter\.|post_adapter\.|prior_adapter\.|out_transform\."
#: ... plus what the official runner unfreezes (``tune_backbone_bias``): block biases, final norm, class token
POINT_PEFT_BIAS_PARAMS = POINT_PEFT_PARAMS + (
    r"|\.(norm1|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.bias$|^model\.norm\.|^model\.cls_(token|pos)$")
I2V_PARAMS = r"\.attn1\.to_(q_ff|out_ff)\."
MV_PARAMS = r"\.attn1\.processor\.to_(q|k|v|out)_(mv|ref)\b|^mv_condition_encoder\."
RES_PARAMS = r"\.lora_[AB]\.resadapter\.|\.resnets\.\d+\.norm[12]\."

NOT_MERGEABLE_BOTTLENECK = "not mergeable: a non-linear bottleneck (down, activation, up) is no weight update"
NOT_MERGEABLE_VPT = "not mergeable: VPT adds prompt tokens, not a weight update"
NOT_MERGEABLE_EARTH = "not mergeable: frequency-split non-linear bottleneck adapters"
NOT_MERGEABLE_CLOUD = "not mergeable: a separate spatial-context network whose features the blocks attend to"
NOT_MERGEABLE_IDPT = "not mergeable: an input-dependent prompt token from a DGCNN"
NOT_MERGEABLE_POINT_PEFT = "not mergeable: prompts, geometry-aware attention and non-linear bottlenecks"
NOT_MERGEABLE_I2V = "not mergeable: an extra attention branch to frame 0's keys / values"
NOT_MERGEABLE_MV = "not mergeable: extra attention branches (and a condition encoder)"
NOT_MERGEABLE_RES = ("not mergeable (no merge registered): the ResCLoRA branch keeps a run-time strength and the "
                     "ResENorm norms are swapped in and out (disable_resadapter)")
NOT_MERGEABLE_DV_LORA = ("not mergeable: the convolutional necks are extra computation (merge_dv_lora folds the "
                         "DV-LoRA part only)")


def build_prior_bank(backbone: nn.Module) -> None:
    """Point-PEFT: a filled point-prior bank (6 entries), so the prior adapters run and the bank is saved."""
    g = torch.Generator().manual_seed(7)
    backbone.point_peft.build_prior_bank(torch.randn(6, backbone.embed_dim, generator=g), torch.arange(6))


@dataclass(frozen=True)
class Case:
    """One row: adapter ``config_class(**kwargs)`` on the tiny registered backbone ``backbone``.

    Attributes:
        opt_out: generic test (``IDENTITY``, ``MERGE``) -> why the property does not apply to this row. A
            ``MERGE`` opt-out means "not mergeable": the merge test then checks the refusal.
        params: regex (``re.search``) that every trainable parameter name matches (without ``base_layer.``).
        fill: data state the adapter keeps and saves beside its weights (e.g. Point-PEFT's prior bank), put in
            after injection; a checkpoint must bring it back into a fresh model.
    """

    backbone: str
    config_class: type[AdapterConfig]
    kwargs: dict[str, Any] = field(default_factory=dict)
    opt_out: dict[str, str] = field(default_factory=dict)
    params: str = ADAPTER_PARAMS
    fill: Callable[[nn.Module], None] | None = None

    def config(self) -> AdapterConfig:
        return self.config_class(**copy.deepcopy(self.kwargs))


CLOUD = dict(context_dim=8, context_depth=2, num_heads=2, head_dim=8, norm_groups=4)
POINT_PEFT = dict(prompt_tokens=5, prompt_blocks=1, adapter_dim=4, prior_adapter_dim=4, geo_k=4, geo_heads=2,
                  geo_attn_dim=8, prompt_dropout=0.0, adapter_dropout=0.0)
MV_COND = "the T2I-Adapter camera encoder (as the official, not zero-initialised) adds residuals from the start"

CASES: dict[str, Case] = {
    # LoRA / DoRA (peft)
    "lora-dinov2": Case("dinov2_test", LoraConfig, dict(r=4, lora_alpha=8)),
    "dora-dinov2": Case("dinov2_test", LoraConfig, dict(r=4, use_dora=True)),
    "lora-mlp-vit16": Case("vit_patch16_test", LoraConfig, dict(r=2, target_modules=["fc1", "fc2"])),
    "lora-sam": Case("sam_test", LoraConfig, dict(r=4)),
    "dora-sam2": Case("sam2_test", LoraConfig, dict(r=2, use_dora=True)),
    "lora-clip": Case("clip_test", LoraConfig, dict(r=4)),
    "lora-effnet": Case("efficientnet_lite0_test", LoraConfig, dict(r=4)),
    "lora-point_mae": Case("point_mae_test", LoraConfig, dict(r=4)),
    "lora-sd15-unet": Case("sd15_test", LoraConfig, dict(r=4)),  # the UNet's attention projections
    "dora-animatediff-unet": Case("animatediff_test", LoraConfig, dict(r=2, use_dora=True)),
    # bottleneck adapters
    "bottleneck-parallel-dinov2": Case("dinov2_test", BottleneckConfig, dict(adapter_dim=8),
                                       {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    "bottleneck-sequential-sam": Case("sam_test", BottleneckConfig, dict(adapter_dim=8, adapter_mode="sequential"),
                                      {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    "bottleneck-sam2": Case("sam2_test", BottleneckConfig, dict(adapter_dim=8), {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    "bottleneck-clip": Case("clip_test", BottleneckConfig, dict(adapter_dim=8), {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    "bottleneck-effnet": Case("efficientnet_lite0_test", BottleneckConfig, dict(adapter_dim=8),
                              {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    "bottleneck-point_mae": Case("point_mae_test", BottleneckConfig, dict(adapter_dim=8),
                                 {MERGE: NOT_MERGEABLE_BOTTLENECK}),
    # visual prompt tuning
    "vpt-dinov2": Case("dinov2_test", VPTConfig, dict(num_tokens=4), {
        IDENTITY: "VPT (Jia et al. 2022) prepends randomly initialised prompt tokens: attention sees them at once",
        MERGE: NOT_MERGEABLE_VPT}),
    "vpt-clip": Case("clip_test", VPTConfig, dict(num_tokens=4, layers=[0, 2]), {
        IDENTITY: "VPT (Jia et al. 2022) prepends randomly initialised prompt tokens: attention sees them at once",
        MERGE: NOT_MERGEABLE_VPT}),
    # Earth-Adapter
    "earth-dinov2": Case("dinov2_test", EarthAdapterConfig, dict(adapter_dim=8), {MERGE: NOT_MERGEABLE_EARTH}),
    "earth-vit16": Case("vit_patch16_test", EarthAdapterConfig, dict(adapter_dim=8, layers=[1, 3], fft_layers=[3]),
                        {MERGE: NOT_MERGEABLE_EARTH}),
    "earth-clip": Case("clip_test", EarthAdapterConfig, dict(adapter_dim=8, cutoff_ratio=0.2),
                       {MERGE: NOT_MERGEABLE_EARTH}),
    "earth-sam": Case("sam_test", EarthAdapterConfig, dict(adapter_dim=8), {MERGE: NOT_MERGEABLE_EARTH}),
    "earth-sam2": Case("sam2_test", EarthAdapterConfig, dict(adapter_dim=4), {MERGE: NOT_MERGEABLE_EARTH}),
    # Cloud-Adapter
    "cloud_adapter-dinov2": Case("dinov2_test", CloudAdapterConfig, dict(CLOUD, rank=4), {MERGE: NOT_MERGEABLE_CLOUD}),
    "cloud_adapter-clip": Case("clip_test", CloudAdapterConfig, dict(CLOUD, rank=4, layers=[1, 3]),
                               {MERGE: NOT_MERGEABLE_CLOUD}),
    "cloud_adapter-sam": Case("sam_test", CloudAdapterConfig, dict(CLOUD, rank=4), {MERGE: NOT_MERGEABLE_CLOUD}),
    "cloud_adapter-sam2": Case("sam2_test", CloudAdapterConfig, dict(CLOUD, rank=None), {MERGE: NOT_MERGEABLE_CLOUD}),
    # SALT, q/v DoRA
    "salt-dinov2": Case("dinov2_test", SaltConfig, dict(r=4, lora_r=2)),
    "salt-sam": Case("sam_test", SaltConfig, dict(
        r=8, lora_r=4, target_modules=["attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"])),
    "qv_dora-sam": Case("sam_test", QVDoraConfig),
    "qv_dora-sam2": Case("sam2_test", QVDoraConfig, dict(r=2)),
    # EndoDAC: DV-LoRA + Convolutional Necks (tiny backbones: necks inside their block count)
    "dv_lora-dinov2": Case("dinov2_test", DVLoraConfig, dict(r=2, neck_blocks=[1, 3]), {MERGE: NOT_MERGEABLE_DV_LORA}),
    "dv_lora-effnet": Case("efficientnet_lite0_test", DVLoraConfig, dict(r=2, neck_blocks=[2, 7]),
                           {MERGE: NOT_MERGEABLE_DV_LORA}),
    # point-cloud prompts and adapters
    "idpt-point_mae": Case("point_mae_test", IDPTConfig, dict(k=8), {
        IDENTITY: "IDPT inserts a DGCNN prompt token (no zero init in the paper or the official code): the "
                  "sequence grows by one token and the pooled [cls, prompt, max] is 3C wide",
        MERGE: NOT_MERGEABLE_IDPT}, params=IDPT_PARAMS),
    "idpt-point_mae-prompt_pos": Case("point_mae_test", IDPTConfig, dict(
        k=8, train_cls_tokens=False, train_prompt_pos=True), {
        IDENTITY: "IDPT inserts a DGCNN prompt token (no zero init): the pooled output is 3C wide",
        MERGE: NOT_MERGEABLE_IDPT}, params=IDPT_PARAMS),
    "point_peft-point_mae": Case("point_mae_test", PointPEFTConfig, POINT_PEFT, {
        IDENTITY: "Point-PEFT's official adapters are Xavier-initialised (no zero init), so the output differs "
                  "from the start (test_point_peft checks the disabled and zeroed paths)",
        MERGE: NOT_MERGEABLE_POINT_PEFT}, params=POINT_PEFT_PARAMS, fill=build_prior_bank),
    "point_peft-point_mae-bias": Case("point_mae_test", PointPEFTConfig, dict(POINT_PEFT, tune_backbone_bias=True), {
        IDENTITY: "Point-PEFT's official adapters are Xavier-initialised (no zero init)",
        MERGE: NOT_MERGEABLE_POINT_PEFT}, params=POINT_PEFT_BIAS_PARAMS, fill=build_prior_bank),
    # diffusion UNets
    "i2v_adapter-animatediff": Case("animatediff_test", I2VAdapterConfig, {}, {MERGE: NOT_MERGEABLE_I2V},
                                    params=I2V_PARAMS),
    "i2v_adapter-sd15-stacked": Case("sd15_test", I2VAdapterConfig, dict(num_frames=2), {MERGE: NOT_MERGEABLE_I2V},
                                     params=I2V_PARAMS),
    "mv_adapter-sd15": Case("sd15_test", MVAdapterConfig, dict(num_views=2, condition_num_res_blocks=1), {
        IDENTITY: f"{MV_COND}; the attention branches alone start at zero (row mv_adapter-sd15-i2mv)",
        MERGE: NOT_MERGEABLE_MV}, params=MV_PARAMS),
    "mv_adapter-sd15-i2mv": Case("sd15_test", MVAdapterConfig, dict(num_views=2, use_ref=True, use_condition=False),
                                 {MERGE: NOT_MERGEABLE_MV}, params=MV_PARAMS),
    "resadapter-sd15": Case("sd15_test", ResAdapterConfig, dict(r=2), {MERGE: NOT_MERGEABLE_RES},
                            params=RES_PARAMS),
    "resadapter-sdxl-lora_only": Case("sdxl_test", ResAdapterConfig, dict(r=2, train_norms=False),
                                      {MERGE: NOT_MERGEABLE_RES}, params=RES_PARAMS),
}
GENERIC_TESTS = (IDENTITY, MERGE)


def rows(test: str | None = None) -> list:
    """Every row, as pytest params; rows that opt out of ``test`` are skipped with their reason."""
    out = []
    for name, case in CASES.items():
        reason = case.opt_out.get(test) if test is not None else None
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


# ---- building, inputs and outputs per backbone family -------------------------------------------------------


def build(case: str, adapter_seed: int | None = None) -> tuple[nn.Module, AdapterConfig]:
    """The row's backbone (seed 0, eval mode) and config; not yet adapted."""
    torch.manual_seed(0)
    backbone = create_backbone(CASES[case].backbone).eval()
    if adapter_seed is not None:
        torch.manual_seed(adapter_seed)
    return backbone, CASES[case].config()


def adapt(case: str, backbone: nn.Module, config: AdapterConfig, fill: bool = True) -> nn.Module:
    apply_adapter(backbone, config)
    if fill and CASES[case].fill is not None:
        CASES[case].fill(backbone)
    return backbone


def family(case: str) -> str:
    return BACKBONES.get(CASES[case].backbone).family


def make_inputs(case: str, backbone: nn.Module) -> dict[str, Any]:
    """Small inputs for the row's backbone: images ``(2, 3, 64, 96)``, clouds ``(2, 64, 3)``, or UNet inputs
    (8x8 latents: 2 videos x 2 frames / 2 objects x 2 views, stacked, or ``(2, C, 2, 8, 8)`` for AnimateDiff)."""
    g = torch.Generator().manual_seed(1)
    kind = family(case)
    if kind == "point":
        return {"points": torch.randn(2, 64, 3, generator=g)}
    if kind != "diffusion":
        return {"images": torch.randn(2, 3, 64, 96, generator=g)}
    unet = backbone.unet
    cfg = unet.config
    motion = type(unet).__name__ == "UNetMotionModel"
    batch = 2 if motion else 4  # AnimateDiff repeats the text over the frames itself
    sample = torch.randn(2, cfg.in_channels, 2, 8, 8, generator=g) if motion else torch.randn(
        4, cfg.in_channels, 8, 8, generator=g)
    inputs = {
        "sample": sample,
        "timestep": torch.tensor([300, 700]) if motion else torch.tensor([300, 300, 700, 700]),
        "text": torch.randn(batch, 7, cfg.cross_attention_dim, generator=g),
        "cameras": torch.rand(batch, 6, 8 * backbone.vae_scale_factor, 8 * backbone.vae_scale_factor, generator=g),
        "reference": torch.randn(2, cfg.in_channels, 8, 8, generator=g),
        "kwargs": {},
    }
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text and (original, crop, target) size ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["kwargs"]["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1)}
    return inputs


def _mv_reference(backbone: nn.Module) -> bool:
    from vadapt.adapters.mv_adapter import mv_adapter_config

    try:
        return mv_adapter_config(backbone).use_ref
    except ValueError:  # no MV-Adapter
        return False


def run(case: str, backbone: nn.Module, inputs: dict[str, Any]) -> list[torch.Tensor]:
    """The outputs the generic tests compare: image feature maps, point tokens and their pooled vector, or the
    UNet's prediction (with MV-Adapter's camera condition and reference pass when the adapter has them)."""
    kind = family(case)
    if kind == "point":
        tokens = backbone.forward_features(inputs["points"])
        return [tokens, backbone.pool(tokens)]
    if kind != "diffusion":
        return list(backbone(inputs["images"]))
    from vadapt.adapters.mv_adapter import compute_reference_features, unet_kwargs_with_condition, use_reference

    kwargs = dict(inputs["kwargs"])
    encoder = getattr(backbone, "mv_condition_encoder", None)
    if encoder is not None:
        kwargs.update(unet_kwargs_with_condition(encoder, inputs["cameras"]))
    context = contextlib.nullcontext()
    if _mv_reference(backbone):
        text = inputs["text"][::2]  # one prompt per object
        context = use_reference(backbone, compute_reference_features(backbone, inputs["reference"], text))
    with context:
        return [backbone(inputs["sample"], inputs["timestep"], inputs["text"], **kwargs)]


def mse(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    return sum(nn.functional.mse_loss(o.float(), t) for o, t in zip(outputs, targets))


def random_targets(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(o.shape, generator=g) for o in outputs]


def trainable_names(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def adapter_state_keys(backbone: nn.Module) -> set[str]:
    """What an adapter checkpoint holds (the rule of ``BaseTask.adapter_state_dict`` for the backbone): the
    trainable parameters and the buffers of every module that owns one (batch-norm statistics, Point-PEFT's bank)."""
    keys = set(trainable_names(backbone))
    for name, module in backbone.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            keys.update(f"{name}.{b}" if name else b for b, _ in module.named_buffers(recurse=False))
    return keys & set(backbone.state_dict())


def perturb(backbone: nn.Module, keys: set[str], seed: int = 3) -> None:
    """Move every float tensor of ``keys`` away from its initial value (as training would)."""
    g = torch.Generator().manual_seed(seed)
    tensors = backbone.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in sorted(keys):
            t = tensors[key]
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g).to(t)
            if key.endswith("running_var"):
                t.mul_(torch.exp(0.2 * noise))
            else:
                t.add_(0.05 * noise)


def upstream_name(key: str) -> str:
    """A state-dict key with the adapters' wrapper level (peft's name ``base_layer``) taken out."""
    return key.replace("base_layer.", "")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the table itself ------------------------------------------------------------------------------------------


def test_table_covers_every_registered_adapter():
    registered = set(ADAPTERS.names())
    assert registered >= {"lora", "bottleneck", "vpt"}
    methods = {case.config_class.method for case in CASES.values()}
    assert registered <= methods, f"adapters without a row in CASES: {sorted(registered - methods)}"
    for name, case in CASES.items():
        assert ADAPTERS.get(case.config_class.method).config_class is case.config_class, name
        assert BACKBONES.get(case.backbone).tiny, name
        assert set(case.opt_out) <= set(GENERIC_TESTS), name
        assert all(isinstance(r, str) and r for r in case.opt_out.values()), name


# ---- the generic tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", rows())
def test_only_adapter_parameters_train(case):
    backbone, config = build(case)
    adapt(case, backbone, config)
    names = trainable_names(backbone)
    assert names, "the adapter added no trainable parameter"
    pattern = re.compile(CASES[case].params)
    strays = [n for n in names if not pattern.search(upstream_name(n))]
    assert not strays, strays
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) < 0.5 * sum(
        p.numel() for p in backbone.parameters()
    )
    # the backbone was in eval mode: the injected modules are too (no adapter dropout at inference)
    assert not [n for n, m in backbone.named_modules() if m.training]


@pytest.mark.parametrize("case", rows(IDENTITY))
def test_adapter_starts_as_identity(case):
    backbone, config = build(case)
    inputs = make_inputs(case, backbone)
    with torch.no_grad():
        before = run(case, backbone, inputs)
        adapt(case, backbone, config).eval()
        after = run(case, backbone, inputs)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", rows())
def test_gradients_reach_only_adapter_parameters(case):
    backbone, config = build(case)
    adapt(case, backbone, config).train()
    inputs = make_inputs(case, backbone)
    outputs = run(case, backbone, inputs)
    mse(outputs, random_targets(outputs)).backward()
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"trainable {name} got no gradient"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert any(p.grad.abs().sum() > 0 for p in backbone.parameters() if p.requires_grad), "all gradients are zero"


@pytest.mark.parametrize("case", rows())
def test_training_moves_only_the_adapter_and_loss_falls(case):
    backbone, config = build(case)
    upstream = {k: v.clone() for k, v in backbone.state_dict().items()}
    adapt(case, backbone, config)
    trainable = set(trainable_names(backbone))
    saved = adapter_state_keys(backbone)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if k not in saved}
    adapter_before = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
    inputs = make_inputs(case, backbone)
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    backbone.train()
    targets, losses = None, []
    for _ in range(6):
        outputs = run(case, backbone, inputs)
        targets = targets or random_targets(outputs)
        loss = mse(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        for n, p in backbone.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    after = backbone.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), f"frozen tensor {k} changed"
    # the upstream backbone's tensors are all still there (under their names, bar the wrapper level) and only the
    # ones the method trains on purpose moved
    by_upstream = {upstream_name(k): k for k in after}
    assert set(upstream) <= set(by_upstream), sorted(set(upstream) - set(by_upstream))[:5]
    for k, v in upstream.items():
        if by_upstream[k] not in trainable:
            assert torch.equal(after[by_upstream[k]], v), f"upstream tensor {k} changed"
    moved = [n for n, p in backbone.named_parameters() if p.requires_grad and not torch.equal(p, adapter_before[n])]
    assert moved, "no adapter parameter was updated"


@pytest.mark.parametrize("case", rows())
def test_checkpoint_round_trip(case, tmp_path):
    from safetensors.torch import load_file, save_file

    backbone, config = build(case, adapter_seed=1)
    adapt(case, backbone, config).eval()
    keys = adapter_state_keys(backbone)
    perturb(backbone, keys)
    inputs = make_inputs(case, backbone)
    with torch.no_grad():
        reference = run(case, backbone, inputs)
    state = backbone.state_dict()
    save_file({k: state[k].detach().contiguous() for k in sorted(keys)}, str(tmp_path / "adapter.safetensors"))

    # the same upstream weights, a different adapter initialisation and no filled data state: all from the file
    fresh, fresh_config = build(case, adapter_seed=2)
    adapt(case, fresh, fresh_config, fill=False).eval()
    assert adapter_state_keys(fresh) == keys
    with torch.no_grad():
        unloaded = run(case, fresh, inputs)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(unloaded, reference)), (
        "a fresh model already gives the adapted outputs: the round trip would prove nothing")
    result = fresh.load_state_dict(load_file(str(tmp_path / "adapter.safetensors")), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert not set(result.missing_keys) & keys, sorted(set(result.missing_keys) & keys)
    with torch.no_grad():
        loaded = run(case, fresh, inputs)
    assert len(loaded) == len(reference)
    for a, b in zip(loaded, reference):
        assert torch.equal(a, b), f"outputs differ after the round trip: max |diff| {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("case", rows())
def test_merged_equals_unmerged_or_merge_refuses(case):
    backbone, config = build(case)
    if MERGE in CASES[case].opt_out:
        assert not can_merge(config)
        adapt(case, backbone, config)
        with pytest.raises(ValueError, match="cannot be folded"):
            merge_adapter(backbone, config)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert can_merge(config)
    inputs = make_inputs(case, backbone)
    upstream_keys = set(backbone.state_dict())
    with torch.no_grad():
        plain = run(case, backbone, inputs)
    adapt(case, backbone, config).eval()
    perturb(backbone, set(trainable_names(backbone)))
    with torch.no_grad():
        unmerged = run(case, backbone, inputs)
        merge_adapter(backbone, config)
        merged = run(case, backbone, inputs)
    assert not any(isinstance(m, (BaseTunerLayer, AdapterLayer)) for m in backbone.modules())
    assert not trainable_names(backbone)
    assert set(backbone.state_dict()) == upstream_keys, "merging left other tensors than the upstream ones"
    assert max((a - b).abs().max() for a, b in zip(plain, unmerged)) > 1e-3, "the update did nothing"
    for a, b in zip(unmerged, merged):
        scale = max(1.0, a.abs().max().item())
        torch.testing.assert_close(b, a, atol=1e-5 * scale, rtol=1e-5)


# ---- specific tests --------------------------------------------------------------------------------------------


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
