"""Any2Point (Tang et al., ECCV 2024): virtual-projection PEs (2D and 1D), Point-PN tokenizer, frozen-ViT and
frozen-CLIP-text point backbones."""

from __future__ import annotations

import math

import pytest
import torch

from vadapt.adapters.any2point import (
    Any2PointBackbone,
    Any2PointConfig,
    PointPNTokenizer,
    SequenceProjectionPE,
    VirtualProjectionPE,
    euler_to_matrix,
)
from vadapt.adapters.any2point.layer import SIX_VIEWS, GuidedGeometry, segment_pool, view_weights
from vadapt.backbones import create_backbone
from vadapt.composites import create_any2point

TINY = dict(num_points=128, tokenizer_dim=6, k_neighbors=8, last_bottleneck=4)


def _patch_centre(i: int, j: int, h: int, w: int) -> tuple[float, float]:
    """Image-plane (x, y) of the centre of patch row ``i``, column ``j``."""
    return (2 * j + 1) / w - 1, (2 * i + 1) / h - 1


@pytest.mark.parametrize("flat", [False, True])
def test_patch_centre_gets_exactly_its_position_row(flat: bool) -> None:
    torch.manual_seed(0)
    h, w, c = 4, 5, 7
    grid = torch.randn(1, h, w, c)
    pe = VirtualProjectionPE(grid.reshape(1, h * w, c) if flat else grid, grid_size=(h, w))
    cells = [(i, j) for i in range(h) for j in range(w)]
    uv = torch.tensor([_patch_centre(i, j, h, w) for i, j in cells]).view(1, 1, -1, 2)
    out = pe.lookup(uv)[0, 0]
    for n, (i, j) in enumerate(cells):
        assert torch.equal(out[n], grid[0, i, j]), (i, j)
    # halfway between two horizontal neighbours: their average (bilinear)
    x0, y0 = _patch_centre(1, 1, h, w)
    x1, _ = _patch_centre(1, 2, h, w)
    mid = pe.lookup(torch.tensor([[[[(x0 + x1) / 2, y0]]]]))[0, 0, 0]
    torch.testing.assert_close(mid, (grid[0, 1, 1] + grid[0, 1, 2]) / 2)


def test_centre_of_the_cloud_reads_the_central_patch_in_every_view() -> None:
    torch.manual_seed(0)
    grid = torch.randn(1, 5, 5, 8)
    pe = VirtualProjectionPE(grid, views=6)
    origin = torch.zeros(2, 1, 3)
    per_view = pe.view_embeddings(origin)
    assert per_view.shape == (2, 6, 1, 8)
    for v in range(6):
        torch.testing.assert_close(per_view[:, v, 0], grid[0, 2, 2].expand(2, -1))
    torch.testing.assert_close(pe(origin)[:, 0], grid[0, 2, 2].expand(2, -1))


def test_views_are_rotations_and_projection_is_pinhole() -> None:
    rot = euler_to_matrix(torch.tensor(SIX_VIEWS, dtype=torch.float64))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    pe = VirtualProjectionPE(torch.zeros(1, 9, 2), views=6, trans=-2.0)
    p = torch.tensor([[[0.3, -0.2, 0.5]]])
    uv = pe.project(p)
    q = torch.einsum("vij,j->vi", pe.rotations, p[0, 0])
    torch.testing.assert_close(uv[0, :, 0], q[:, :2] / (q[:, 2:] + 2.0))
    # the six views look from six distinct directions: the same point lands in different places
    assert len({tuple(round(float(t), 4) for t in uv[0, v, 0]) for v in range(6)}) == 6


def test_pe_validates_grid() -> None:
    with pytest.raises(ValueError, match="grid_size"):
        VirtualProjectionPE(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match="views"):
        VirtualProjectionPE(torch.zeros(1, 2, 2, 4), views=7)


def test_tokenizer_shapes_and_official_size() -> None:
    torch.manual_seed(0)
    tok = PointPNTokenizer(num_points=128, num_stages=3, embed_dim=6, k_neighbors=8, last_bottleneck=4)
    pts = torch.randn(2, 128, 3)
    centres, tokens = tok(pts)
    assert centres.shape == (2, 16, 3) and tokens.shape == (2, 16, 48)
    # centres are cloud points (FPS of FPS of FPS)
    assert torch.cdist(centres, pts, compute_mode="donot_use_mm_for_euclid_dist").amin(-1).max() < 1e-6
    assert torch.isfinite(tokens).all()
    # the official Point_PN_scan (1024 -> 128 tokens of 768, k = 64, lastdim 32)
    with torch.device("meta"):
        full = PointPNTokenizer()
    assert full.group_nums == [512, 256, 128] and full.out_channels == 768
    assert sum(p.numel() for p in full.parameters()) == 276_672


def _tiny_backbone() -> Any2PointBackbone:
    torch.manual_seed(0)
    return Any2PointBackbone(create_backbone("dinov2_test"), Any2PointConfig(**TINY))


def test_backbone_shapes_and_pool() -> None:
    bb = _tiny_backbone().eval()
    pts = torch.randn(2, 128, 3)
    feats = bb.forward_features(pts)
    assert feats.shape == (2, 1 + 16, bb.embed_dim)
    pooled = bb.pool(feats)
    assert pooled.shape == (2, 2 * bb.embed_dim)
    torch.testing.assert_close(pooled[:, bb.embed_dim :], feats[:, 1:].amax(1))
    assert bb.num_prefix_tokens == 1 and len(bb.blocks) == 4
    assert bb.last_pos.shape == feats.shape and bb.last_centres.shape == (2, 16, 3)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        bb.forward_features(torch.randn(2, 128, 4))
    bb.set_bands(("red", "green", "blue"))  # create_backbone's default: a no-op
    with pytest.raises(ValueError, match="no bands"):
        bb.set_bands(("red",))


def test_backbone_uses_the_vit_position_grid() -> None:
    bb = _tiny_backbone().eval()
    m = bb.base.model
    h, w = bb.grid_size
    grid = m.pos_embed[0, 1:].reshape(h, w, -1)
    # the lookup reads the ViT's live pos_embed (class row dropped): patch (0, 1) centre -> row 1
    uv = torch.tensor([[[[(2 * 1 + 1) / w - 1, (2 * 0 + 1) / h - 1]]]])
    assert torch.equal(bb.pe.lookup(uv, bb._pos_table())[0, 0, 0], grid[0, 1])


def test_only_new_parameters_train_and_vit_is_bit_identical() -> None:
    bb = _tiny_backbone()
    before = {k: v.clone() for k, v in bb.base.state_dict().items()}
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    new = ("tokenizer.", "proj.", "cls_token", "cls_pos", "norm.", "adapters.", "attn2d.", "norm2d.")
    assert trainable and all(n.startswith(new) for n in trainable)
    assert not any(p.requires_grad for p in bb.base.parameters())
    head = torch.nn.Linear(2 * bb.embed_dim, 3)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-2)
    bb.train()
    pts, y = torch.randn(4, 128, 3), torch.tensor([0, 1, 2, 0])
    start = {n: p.detach().clone() for n, p in bb.named_parameters() if p.requires_grad}
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(head(bb.pool(bb.forward_features(pts))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bb.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [n for n, p in bb.named_parameters() if p.requires_grad and not torch.equal(start[n], p)]
    for part in ("tokenizer.", "adapters.", "attn2d.", "norm2d.", "cls_pos", "norm."):
        assert any(n.startswith(part) for n in moved), part


def test_real_dinov2_trainable_count_on_meta() -> None:
    """Paper: 0.80 M trainable (DINOv2 ViT-B/14, without the head)."""
    with torch.device("meta"):
        vit = create_backbone("vit_base_patch14_dinov2", weights=None)
        bb = Any2PointBackbone(vit)
        tok_only = Any2PointBackbone(vit, Any2PointConfig(adapter_dim=0))
    counts = bb.trainable_parameters()
    # Point-PN tokenizer 276,672; per block: bottleneck 768-8-768 (13,064) + 7 BN (10,752); shared by the blocks:
    # 6 local attentions 768 -> 36 -> 12 -> 768 (37,668 each) + 6 LayerNorms; cls_token + cls_pos; final norm
    assert counts == {
        "cls_token": 768, "cls_pos": 768, "tokenizer": 276_672, "norm": 1_536,
        "adapters": 12 * (13_064 + 7 * 1_536), "attn2d": 6 * 37_668, "norm2d": 6 * 1_536,
    }
    assert sum(counts.values()) == 800_760  # 0.80 M
    assert sum(tok_only.trainable_parameters().values()) == 279_744
    assert bb.grid_size == (37, 37) and bb.image_size == 518
    assert math.prod(bb.pe.pos_grid.shape) == 37 * 37 * 768


def test_view_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    views, ref = torch.randn(2, 6, 5, 8), torch.randn(2, 5, 8)
    w = view_weights(views, ref)
    assert w.shape == (2, 6, 5) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 5))
    # the view most aligned with the 3D branch gets the largest weight
    views[:, 3] = ref
    assert (view_weights(views, ref).argmax(1) == 3).all()
    # and in a full forward, every block's weights sum to 1 over the views
    bb = _tiny_backbone().eval()
    bb.forward_features(torch.randn(2, 128, 3))
    for adapter in bb.adapters:
        assert adapter.last_weights.shape == (2, 6, 16)
        torch.testing.assert_close(adapter.last_weights.sum(1), torch.ones(2, 16))


def test_segment_pool_and_geometry() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [5.0, 0.0]])
    idx = torch.tensor([0, 0, 1])
    torch.testing.assert_close(segment_pool(x, idx, 2, "mean"), torch.tensor([[2.0, 0.5], [5.0, 0.0]]))
    torch.testing.assert_close(segment_pool(x, idx, 2, "max"), torch.tensor([[3.0, 2.0], [5.0, 0.0]]))
    centres = torch.tensor([[[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    uv = torch.tensor([[[[-0.99, -0.99], [-0.98, -0.99], [0.99, 0.99]]]])  # one view
    pe = VirtualProjectionPE(torch.zeros(1, 4, 4, 2))
    geo = GuidedGeometry(centres, *pe.cell_index(uv, image_size=518, cell_size=26), grid_3d=0.16)
    assert geo.voxel.tolist() == [0, 0, 1] and geo.num_voxels == 2
    assert geo.cells[0].tolist() == [0, 0, 1] and geo.num_cells == [2]
    assert geo.same_cell[0][0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_adapted_block_reduces_to_the_frozen_block() -> None:
    """With the adapter's contributions switched off, the re-run block equals timm's own forward."""
    bb = _tiny_backbone().eval()
    bb.config.scale_factor, bb.config.coef_pro = 0.0, 0.0
    x = torch.randn(2, 17, bb.embed_dim)
    centres = torch.randn(2, 16, 3) * 0.3
    geo = GuidedGeometry(centres, *bb.cell_ids(bb.pe.project(centres)), 0.16)
    with torch.no_grad():
        torch.testing.assert_close(bb.adapted_block(bb.blocks[1], bb.adapters[1], x, geo), bb.blocks[1](x))


def test_tokenizer_only_model() -> None:
    torch.manual_seed(0)
    bb = create_any2point("dinov2_test", **TINY, adapter_dim=0).eval()
    assert bb.name == "any2point_dinov2_test"
    bb.freeze()  # create_backbone freezes what it builds: only the ViT freezes
    assert {n.split(".")[0] for n, p in bb.named_parameters() if p.requires_grad} == {
        "tokenizer", "proj", "cls_token", "cls_pos", "norm"
    }
    assert bb.adapters is None
    assert bb.forward_features(torch.randn(1, 128, 3)).shape == (1, 17, bb.embed_dim)


# ---- CLIP text-transformer variant (1D positions; official Any2Point_CLIP_Lang) ----------------------------


def test_sequence_pe_reads_exact_rows_and_interpolates() -> None:
    torch.manual_seed(0)
    table = torch.randn(77, 5)
    pe = SequenceProjectionPE(table[None])
    t = torch.tensor([[[0.0, 3.0, 76.0, 10.5]]])
    out = pe.lookup(t)[0, 0]
    assert torch.equal(out[0], table[0]) and torch.equal(out[1], table[3]) and torch.equal(out[2], table[76])
    torch.testing.assert_close(out[3], (table[10] + table[11]) / 2)
    with pytest.raises(ValueError, match="pos_table"):
        SequenceProjectionPE(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="direction"):
        SequenceProjectionPE(table, direction=(0.0, 0.0, 0.0))


def test_sequence_projection_spans_the_table_in_every_view() -> None:
    """Per cloud and view, the extreme tokens along the projected line read the first and last positions."""
    torch.manual_seed(0)
    pe = SequenceProjectionPE(torch.randn(77, 4), views=6)
    centres = torch.randn(2, 16, 3)
    t = pe.project(centres)
    assert t.shape == (2, 6, 16)
    torch.testing.assert_close(t.amin(-1), torch.zeros(2, 6))
    torch.testing.assert_close(t.amax(-1), torch.full((2, 6), 76.0))
    # the row order is the order along R_v^T d: the view's rotation of the official direction (-1, 0, 1)
    d = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2)
    for v in range(6):
        s = centres @ (pe.axes[v])
        assert torch.equal(t[:, v].argsort(-1), s.argsort(-1))
        torch.testing.assert_close(pe.axes[v], euler_to_matrix(torch.tensor([SIX_VIEWS[v]]))[0].T @ d)
    cells, n = pe.cell_index(t, 2.0)
    assert n == 39 and int(cells.min()) == 0 and int(cells.max()) == 38  # official coef_1dgird 2 on 77 rows


def test_real_clip_text_trainable_count_on_meta() -> None:
    """Paper: 0.95 M trainable (CLIP ViT-L/14 text transformer, without the head)."""
    from vadapt.backbones.base import BACKBONES
    from vadapt.composites.any2point import _build_clip_text

    with torch.device("meta"):
        bb = _build_clip_text(**BACKBONES.get("any2point_clip_text_l14").kwargs)
    counts = bb.trainable_parameters()
    # official CLIP run: bottleneck 768-16-768 (25,360) + 7 BN per block; the rest as DINOv2's
    assert counts == {
        "cls_token": 768, "cls_pos": 768, "tokenizer": 276_672, "norm": 1_536,
        "adapters": 12 * (25_360 + 7 * 1_536), "attn2d": 6 * 37_668, "norm2d": 6 * 1_536,
    }
    assert sum(counts.values()) == 948_312  # 0.95 M
    assert isinstance(bb.pe, SequenceProjectionPE) and bb.pe.pos_table.shape == (77, 768) and len(bb.blocks) == 12


def _tiny_clip_file(tmp_path):
    """A full CLIP state dict in open_clip's file layout (both towers, MHA ``in_proj``) from a tiny model."""
    import open_clip

    torch.manual_seed(1)
    text_cfg = {"width": 32, "heads": 2, "layers": 4, "vocab_size": 64}
    clip = open_clip.CLIP(embed_dim=768, vision_cfg={"width": 32, "layers": 2, "patch_size": 16, "image_size": 32,
                                                     "head_width": 16}, text_cfg=text_cfg, quick_gelu=True)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), path)
    return clip, path


def test_clip_text_tower_loads_a_full_clip_file(tmp_path) -> None:
    clip, path = _tiny_clip_file(tmp_path)
    bb = create_backbone("any2point_clip_test", weights=str(path)).eval()
    assert torch.equal(bb.base.model.positional_embedding, clip.positional_embedding)
    assert torch.equal(bb.norm.weight, clip.ln_final.weight) and bb.norm.weight.requires_grad
    assert not any(p.requires_grad for p in bb.base.parameters())
    # the fused-qkv blocks compute open_clip's own blocks (no causal mask, as the official 3D use)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb.blocks[2](x), clip.transformer.resblocks[2](x), rtol=1e-5, atol=1e-5)
        bb.config.scale_factor, bb.config.coef_pro = 0.0, 0.0
        centres = torch.randn(2, 16, 3) * 0.3
        geo = GuidedGeometry(centres, *bb.cell_ids(bb.pe.project(centres)), 0.08)
        torch.testing.assert_close(bb.adapted_block(bb.blocks[2], bb.adapters[2], x, geo), bb.blocks[2](x))
    # a file of another model names its problem
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.bin")
    with pytest.raises(Exception, match="positional_embedding|missing"):
        create_backbone("any2point_clip_test", weights=str(tmp_path / "wrong.bin"))


def test_clip_variant_trains_only_its_parts_and_base_is_bit_identical() -> None:
    torch.manual_seed(0)
    bb = create_backbone("any2point_clip_test")
    before = {k: v.clone() for k, v in bb.base.state_dict().items()}
    head = torch.nn.Linear(2 * bb.embed_dim, 3)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-2)
    bb.train()
    pts, y = torch.rand(4, 128, 3) * 2 - 1, torch.tensor([0, 1, 2, 0])
    start = {n: p.detach().clone() for n, p in bb.named_parameters() if p.requires_grad}
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(head(bb.pool(bb.forward_features(pts))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bb.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = {n.split(".")[0] for n, p in bb.named_parameters() if p.requires_grad and not torch.equal(start[n], p)}
    assert {"tokenizer", "adapters", "attn2d", "norm2d", "cls_token", "cls_pos", "norm", "proj"} <= moved
    for adapter in bb.adapters:  # the view weights sum to 1 in the 1D variant too
        torch.testing.assert_close(adapter.last_weights.sum(1), torch.ones(4, 16))
