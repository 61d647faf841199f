"""Rotary position embeddings (RoPE; Su et al., "RoFormer", 2021): the rotation and its backward,
on arrays, for the fused attention op (SelfAttention with rotary=True) and the KV cache.

Instead of adding a learned vector per position to the tokens, attention rotates each head's
queries and keys by angles that grow with the position. Channel pair i of a head, (x1_i, x2_i)
= (x[i], x[hs/2 + i]), turns by the angle t * theta_i at position t, theta_i = base^(-2i/hs):

    y1 = x1 cos + x2 sin
    y2 = x2 cos - x1 sin

A query at position t and a key at s then score q . k rotated by (t - s) angles: attention
sees how far apart two tokens are, not where they stand. The rotation is orthogonal, so its
backward is the rotation by the opposite angle:

    dx1 = dy1 cos - dy2 sin
    dx2 = dy1 sin + dy2 cos

gpt/model.py (rotate) writes the same forward from Tensor ops, the reference path.
Shapes: T = positions, hs = head size, x (..., T, hs), cos and sin (T, hs/2).
"""

from __future__ import annotations

import functools

from ..backend import array_module

ROTARY_BASE = 10000.0  # RoFormer's and GPT-NeoX's


@functools.lru_cache(maxsize=16)
def rotary_tables(xp, T: int, head_size: int, dtype) -> tuple:
    """cos and sin of the angles t * theta_i, (T, hs/2) each, computed in float64 and then
    rounded once to dtype. Shared between calls: never write to them."""
    if head_size % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {head_size}")
    theta = ROTARY_BASE ** (-xp.arange(0, head_size, 2, dtype=xp.float64) / head_size)  # (hs/2,)
    angles = xp.outer(xp.arange(T, dtype=xp.float64), theta)  # (T, hs/2)
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def rotate(x, cos, sin, sign: int = 1):
    """x (..., T, hs) with each channel pair turned by its angle (sign -1: turned back)."""
    xp = array_module(x)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    sin = sin if sign > 0 else -sin
    return xp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)

