"""The batched canonical attention form equals the per-head LoRA factorisation it batches."""

from __future__ import annotations

import pytest
import torch

from weightspace.attention import AttentionWeights, _canonical_pairs, canonical_attention
from weightspace.lora import LoraFactors, canonical_factors


@pytest.mark.parametrize(("m", "d", "n"), [(9, 4, 9), (3, 4, 7), (6, 2, 2)])  # rank < d too
def test_batched_pairs_equal_canonical_factors_head_by_head(m: int, d: int, n: int) -> None:
    gen = torch.Generator().manual_seed(m * 100 + n)
    left = torch.randn(5, m, d, generator=gen, dtype=torch.float64)
    right = torch.randn(5, d, n, generator=gen, dtype=torch.float64)
    b_star, a_star, sigma = _canonical_pairs(left, right)
    for h in range(5):
        ref = canonical_factors(LoraFactors(A=right[h], B=left[h], scaling=1.0))
        torch.testing.assert_close(b_star[h], ref.B, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a_star[h], ref.A, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sigma[h], ref.B.pow(2).sum(0).sqrt(), rtol=1e-10, atol=1e-12)
        # the product is kept: B* A* = left @ right
        torch.testing.assert_close(b_star[h] @ a_star[h], left[h] @ right[h])


def test_canonical_attention_keeps_the_head_products_and_sorts_heads() -> None:
    gen = torch.Generator().manual_seed(0)
    e, heads = 12, 3
    weights = AttentionWeights(
        in_proj=torch.randn(3 * e, e, generator=gen, dtype=torch.float64),
        in_bias=torch.randn(3 * e, generator=gen, dtype=torch.float64),
        out_proj=torch.randn(e, e, generator=gen, dtype=torch.float64),
        out_bias=torch.randn(e, generator=gen, dtype=torch.float64),
        num_heads=heads,
    )
    star = canonical_attention(weights)
    q, k, v = weights.augmented()
    qs, ks, vs = star.augmented()
    qk = {round(float(torch.linalg.matrix_norm(q[h].T @ k[h])), 8) for h in range(heads)}
    qk_star = [float(torch.linalg.matrix_norm(qs[h].T @ ks[h])) for h in range(heads)]
    assert {round(x, 8) for x in qk_star} == qk  # the same heads, reordered
    first = [float(torch.linalg.svdvals(qs[h].T @ ks[h])[0]) for h in range(heads)]
    assert first == sorted(first, reverse=True)
    vo = weights.head_outputs()
    vo_star = star.head_outputs()
    assert {round(float(torch.linalg.matrix_norm(vo[h] @ v[h])), 8) for h in range(heads)} == {
        round(float(torch.linalg.matrix_norm(vo_star[h] @ vs[h])), 8) for h in range(heads)
    }
