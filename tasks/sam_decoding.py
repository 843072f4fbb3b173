"""MapSAM's prompt generator and guided mask decoding around SAM's / SAM 2's own mask decoder modules.

MapSAM (Xia et al., "MapSAM: Adapting Segment Anything Model for Automated Feature Detection in Historical
Maps", arXiv:2411.06971; official code ``Xue-Xia/MapSAM``, files ``segment_anything/modeling/sam.py`` and
``transformer.py``) makes SAM prompt-free:

* :class:`CoarseMaskGenerator`: per-pixel MLP heads ("SPGen": 1x1 convs ``C -> 64 -> 16 -> 1`` with LayerNorm and
  GELU) on several feature levels, their logits averaged into a coarse mask ``(B, 1, g, g)``;
* the coarse mask's extreme pixels become point prompts and its foreground gives a masked-mean "target"
  embedding (both in :mod:`tasks.promptable`);
* :func:`decode_masks`: SAM's two-way transformer with the target embedding added to every query token before
  each layer and to the queries of the final token-to-image attention, and with *masked* token-to-image
  cross-attention (Mask2Former style): layer 1 attends only to the coarse mask's foreground, layer 2 only to the
  foreground of the mask that the first mask token predicts after layer 1.

The functions run the decoder's own submodules (so official weights, ``requires_grad`` choices and LoRA wrappers
of its projections all apply); we re-state SAM's ``MaskDecoder.predict_masks`` / ``TwoWayTransformer.forward``
here because the upstream modules have no hook for the injections. With no target embedding and no masks the
result equals the upstream decoder's (tested for SAM and SAM 2). SAM 2's decoder differs only in an extra
object-score token in front and in adding the stride-4/8 features while upscaling; both are handled.

Deviation from the official code: its attention adds the mask (0 / -1e9) *after* the softmax and applies a
second softmax, which makes the masked attention nearly uniform over the kept positions; we apply the mask
before the softmax as Mask2Former (and the paper's description) does. Where a mask keeps no position, the row
attends everywhere (Mask2Former's rule; the official code leaves it to the double softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CoarseMaskHead(nn.Module):
    """One MapSAM SPGen head: a per-pixel MLP ``(B, C, g, g) -> (B, 1, g, g)`` logits."""

    def __init__(self, channels: int, hidden: tuple[int, int] = (64, 16)) -> None:
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d

        layers: list[nn.Module] = []
        width = channels
        for h in hidden:
            layers += [nn.Conv2d(width, h, 1), LayerNorm2d(h), nn.GELU()]
            width = h
        layers.append(nn.Conv2d(width, 1, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class CoarseMaskGenerator(nn.Module):
    """MapSAM's coarse mask: the mean of one :class:`CoarseMaskHead` per feature level.

    Args:
        channels: channels of every level (SAM's neck width, 256 for the official models).
        levels: number of feature levels (MapSAM on SAM ViT-B: 4 = the final embedding and the neck applied to
            the outputs of blocks 0, 4 and 8).
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.heads = nn.ModuleList(CoarseMaskHead(channels) for _ in range(levels))

    def forward(self, levels: list[Tensor]) -> Tensor:
        """``levels``: ``len(heads)`` maps ``(B, C, g, g)`` -> mean logits ``(B, 1, g, g)``."""
        if len(levels) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature levels, got {len(levels)}")
        return torch.stack([head(x) for head, x in zip(self.heads, levels)]).mean(dim=0)


def _attend(attention: nn.Module, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None) -> Tensor:
    """SAM's ``Attention`` (projections, heads, output projection) with a key mask applied before the softmax.

    ``keep``: ``(B, N_k)`` bool, True where a key takes part; rows that keep nothing attend everywhere.
    """
    if keep is None:
        return attention(q=q, k=k, v=v)
    heads = attention.num_heads

    def split(x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, C/heads)

    keep = keep | ~keep.any(dim=1, keepdim=True)
    out = F.scaled_dot_product_attention(split(attention.q_proj(q)), split(attention.k_proj(k)),
                                         split(attention.v_proj(v)), attn_mask=keep[:, None, None, :])
    b, _, n, _ = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, -1))


def _two_way_layer(layer: nn.Module, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                   keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """SAM's ``TwoWayAttentionBlock.forward`` with a key mask on the token-to-image cross-attention."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + _attend(layer.cross_attn_token_to_image, queries + query_pe, keys + key_pe,
                                            keys, keep))
    queries = layer.norm3(queries + layer.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=k, k=q, v=queries))
    return queries, keys


def _two_way_transformer(transformer: nn.Module, image: Tensor, image_pe: Tensor, tokens: Tensor,
                         target: Tensor | None, keep: Tensor | None, mask_token: int) -> tuple[Tensor, Tensor]:
    """SAM's ``TwoWayTransformer.forward`` with MapSAM's injections.

    Args:
        image, image_pe: ``(B, C, g, g)``.
        tokens: ``(B, T, C)`` output and prompt tokens.
        target: ``(B, 1, C)`` added to the queries before each layer and to the final attention's queries.
        keep: ``(B, g*g)`` bool, the first layer's key mask; later layers use the foreground of the mask that
            token ``mask_token`` predicts (``norm_final_attn(token) . (keys + pe) > 0``).

    Returns:
        the processed tokens ``(B, T, C)`` and image ``(B, g*g, C)``.
    """
    keys = image.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        if target is not None:
            queries = queries + target
        queries, keys = _two_way_layer(layer, queries, keys, tokens, key_pe, keep)
        if keep is not None:
            token = transformer.norm_final_attn(queries[:, mask_token])  # (B, C)
            keep = torch.einsum("bc,bnc->bn", token, keys + key_pe).detach() > 0
    q = queries + tokens if target is None else queries + tokens + target
    queries = queries + transformer.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries), keys


def decode_masks(mask_decoder: nn.Module, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                 high_res: list[Tensor] | None = None, target: Tensor | None = None,
                 coarse_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All mask tokens' masks from SAM's or SAM 2's ``MaskDecoder``, optionally MapSAM-guided.

    Args:
        mask_decoder: ``segment_anything`` or ``sam2`` ``MaskDecoder``.
        image: ``(B, C, g, g)`` image embeddings (one per prompt set).
        image_pe: ``(1, C, g, g)`` the prompt encoder's ``get_dense_pe()``.
        sparse, dense: the prompt encoder's outputs ``(B, P, C)`` and ``(B, C, g, g)``.
        high_res: SAM 2's ``[conv_s0(stride-4), conv_s1(stride-8)]`` features (``use_high_res_features``).
        target: ``(B, C)`` MapSAM's masked-mean embedding (``None``: not added).
        coarse_logits: ``(B, 1, g, g)`` MapSAM's coarse mask: turns on masked cross-attention.

    Returns:
        masks ``(B, K, 4g, 4g)`` of all ``K`` mask tokens (token 0 is SAM's single-mask output, 1..3 the
        multimask outputs) and predicted IoUs ``(B, K)``.
    """
    offset = 1 if getattr(mask_decoder, "pred_obj_scores", False) else 0  # SAM 2's object-score token
    weights = [mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight]
    if offset:
        weights.insert(0, mask_decoder.obj_score_token.weight)
    output_tokens = torch.cat(weights)[None].expand(len(sparse), -1, -1)
    tokens = torch.cat([output_tokens, sparse], dim=1)
    src = image + dense
    keep = None if coarse_logits is None else coarse_logits.detach().flatten(1) > 0
    target = None if target is None else target[:, None].to(tokens.dtype)
    hs, src = _two_way_transformer(mask_decoder.transformer, src, image_pe.expand(len(src), -1, -1, -1), tokens,
                                   target, keep, mask_token=offset + 1)
    b, c, h, w = image.shape
    src = src.transpose(1, 2).reshape(b, c, h, w)
    if getattr(mask_decoder, "use_high_res_features", False):
        dc1, ln1, act1, dc2, act2 = mask_decoder.output_upscaling
        feat_s0, feat_s1 = high_res
        upscaled = act2(dc2(act1(ln1(dc1(src) + feat_s1))) + feat_s0)
    else:
        upscaled = mask_decoder.output_upscaling(src)
    count = mask_decoder.num_mask_tokens
    mask_tokens = hs[:, offset + 1 : offset + 1 + count]
    hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)], 1)
    masks = (hyper @ upscaled.flatten(2)).view(b, count, *upscaled.shape[-2:])
    return masks, mask_decoder.iou_prediction_head(hs[:, offset])  # SAM 2's head may end in a sigmoid itself
