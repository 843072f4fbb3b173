"""I2V-Adapter layers (Guo et al., "I2V-Adapter: A General Image-to-Video Adapter for Diffusion Models",
SIGGRAPH 2024, arXiv:2312.16693): the first-frame attention branch of every spatial self-attention.

Port of the official ``MixedCausalAttention2D`` (KwaiVGI/I2V-Adapter ``src/models/attention.py``) to the
diffusers ``Attention`` processor API. The new weights are plain submodules of the adapted ``attn1``
(``attn1.to_q_ff``, ``attn1.to_out_ff``), so the UNet's state dict holds them under the official key names.

Shapes: ``B`` videos, ``F`` frames per video, ``N`` = h·w tokens of one frame, ``C`` the attention width.
Inside the spatial blocks frames are stacked video-major: rows ``b·F .. b·F + F - 1`` are video ``b``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameState:
    """Number of frames per video shared by all I2V processors of one UNet.

    Also the UNet's forward pre-hook: a 5-D ``sample`` ``(B, C, F, h, w)`` (``UNetMotionModel``) sets
    ``num_frames = F`` before every forward. A 2-D UNet fed ``(B·F, C, h, w)`` keeps the value set by hand.
    """

    def __init__(self, num_frames: int) -> None:
        self.num_frames = int(num_frames)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook (``with_kwargs=True``): a 5-D ``sample`` ``(B, C, F, h, w)`` sets ``num_frames = F``; any
        other input leaves it."""
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor) and sample.ndim == 5:
            self.num_frames = int(sample.shape[2])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(R, L, heads·d)`` -> ``(R, heads, L, d)``."""
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)


def first_frame_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_frames: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of every frame's queries to the keys / values of frame 0 of its own video.

    Args:
        query: ``(B·F, heads, N, d)``, rows video-major.
        key, value: ``(B·F, heads, M, d)``; only frame 0 of each video (rows ``b·F``) is read.
        num_frames: ``F``.
        attention_mask: ``None`` or an SDPA mask broadcastable to ``(B·F, heads, N, M)`` (the row's own mask is
            used with frame 0's keys, as in the official code).

    Returns:
        ``(B·F, heads, N, d)``. Without a mask the ``F`` frames' queries are folded into one sequence per video
        and attend to frame 0's keys once (no ``F``-fold copy of the keys and values); softmax is per query, so
        this equals the official ``k[:, [0] * F]`` broadcast.
    """
    rows, heads, n, d = query.shape
    if rows % num_frames:
        raise ValueError(f"I2V-Adapter: {rows} frames in the batch is not a multiple of num_frames={num_frames}; "
                         f"call set_num_frames(backbone, F) for a 2-D UNet fed (B*F, C, h, w) latents")
    b = rows // num_frames
    k0 = key[::num_frames]  # (B, heads, M, d): frame 0 of each video
    v0 = value[::num_frames]
    if attention_mask is None:
        q = query.view(b, num_frames, heads, n, d).transpose(1, 2).reshape(b, heads, num_frames * n, d)
        out = F.scaled_dot_product_attention(q, k0, v0, dropout_p=0.0, is_causal=False)
        return out.view(b, heads, num_frames, n, d).transpose(1, 2).reshape(rows, heads, n, d)
    k0 = k0.repeat_interleave(num_frames, dim=0)
    v0 = v0.repeat_interleave(num_frames, dim=0)
    return F.scaled_dot_product_attention(query, k0, v0, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)


class I2VAttnProcessor:
    """diffusers attention processor of an I2V-adapted spatial self-attention (official ``MixedCausalAttention2D``).

    With ``x`` the normalised hidden states ``(B·F, N, C)``::

        main = to_out[0](SA(to_q(x), to_k(x), to_v(x)))           # unchanged per-frame self-attention
        ff   = to_out_ff(SA(to_q_ff(x), to_k(x)[frame 0], to_v(x)[frame 0]))
        out  = to_out[1](main + ff)                               # then residual / rescale as AttnProcessor2_0

    Same heads, scale and mask as the main path; frame 0 gets the branch too (it attends to its own keys).
    The main path repeats diffusers' ``AttnProcessor2_0`` op for op, so with a zero ``to_out_ff`` the output
    equals the base model's bit for bit. The weights live on ``attn`` (``attn.to_q_ff``, ``attn.to_out_ff``);
    this object only holds the shared :class:`FrameState` (``num_frames`` may also be passed per call through
    ``cross_attention_kwargs``, at the cost of diffusers warnings from every other processor).
    """

    def __init__(self, state: FrameState) -> None:
        self.state = state

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` ``(B·F, N, C)`` (or ``(B·F, C, h, w)``) -> the same shape, with the first-frame branch
        added (class docstring). ``num_frames`` overrides the shared :class:`FrameState` for this call."""
        frames = self.state.num_frames if num_frames is None else int(num_frames)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        query_ff = attn.to_q_ff(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = _heads(query, attn.heads)
        query_ff = _heads(query_ff, attn.heads)
        key = _heads(key, attn.heads)
        value = _heads(value, attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
            query_ff = attn.norm_q(query_ff)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        branch = first_frame_attention(query_ff, key, value, frames, attention_mask)
        branch = branch.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        out = attn.to_out[0](out) + attn.to_out_ff(branch)  # the branch joins before the dropout (official)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def first_frame_branch(attn: nn.Module, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The branch alone, ``to_out_ff(SA(to_q_ff(x), k0, v0))``, for an adapted self-attention.

    ``hidden_states``: ``(B·F, N, C)`` (after any ``group_norm``, which SD does not have) -> ``(B·F, N, C)``.
    For tests and inspection; the processor computes it inline.
    """
    q = _heads(attn.to_q_ff(hidden_states), attn.heads)
    k = _heads(attn.to_k(hidden_states), attn.heads)
    v = _heads(attn.to_v(hidden_states), attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = first_frame_attention(q, k, v, num_frames)
    return attn.to_out_ff(out.transpose(1, 2).reshape(hidden_states.shape[0], -1, out.shape[1] * out.shape[-1]))


def add_first_frame_branch(attn: nn.Module, state: FrameState) -> None:
    """Give the diffusers self-attention ``attn`` the I2V weights and processor, in place.

    ``attn.to_q_ff``: ``Linear(C, inner, bias=False)`` holding a copy of ``to_q``'s weight (official
    ``from_pretrained_ip`` copies it; a ``to_q`` bias, absent in SD, is not copied). ``attn.to_out_ff``:
    ``Linear(inner, C_out)`` with weight and bias zero. Both trainable, on ``to_q``'s device and dtype.
    """
    if getattr(attn, "is_cross_attention", False):
        raise ValueError("I2V-Adapter adapts self-attention; this attn1 is a cross-attention "
                         "(only_cross_attention UNets are not supported)")
    if hasattr(attn, "to_q_ff") or isinstance(attn.processor, I2VAttnProcessor):
        raise ValueError("this attention already has an I2V-Adapter branch")
    w = attn.to_q.weight
    inner, c_in = w.shape
    c_out = attn.to_out[0].out_features
    to_q_ff = nn.Linear(c_in, inner, bias=False, device=w.device, dtype=w.dtype)
    to_out_ff = nn.Linear(inner, c_out, bias=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        to_q_ff.weight.copy_(w)
        to_out_ff.weight.zero_()
        to_out_ff.bias.zero_()
    attn.to_q_ff = to_q_ff.requires_grad_(True)
    attn.to_out_ff = to_out_ff.requires_grad_(True)
    attn.set_processor(I2VAttnProcessor(state))
