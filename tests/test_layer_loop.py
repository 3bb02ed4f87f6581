"""The model's layer loop (`Transformer.parts`) and its two walks: every pass without a graph (the plain
forward, the frozen linearised forward and its transpose) goes through `Transformer.walk` /
`walk_back`, so their stream bookkeeping is pinned here on hand-made linear passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acdc.model import Architecture, HeadsPart, MLPPart, Transformer, parts_of

ARCH = Architecture(n_layers=3, n_heads=2, d_model=6, d_head=3, d_mlp=8, d_vocab=11, parallel_attn_mlp=False,
                    position_embedding="standard", rotary_dim=0, rotary_base=10000.0, eps=1e-5, act_fn="gelu")


def test_parts_follow_the_family_record():
    assert parts_of(ARCH) == [HeadsPart(0, 0), MLPPart(0, 1), HeadsPart(1, 2), MLPPart(1, 3), HeadsPart(2, 4), MLPPart(2, 5)]
    parallel = dataclasses.replace(ARCH, parallel_attn_mlp=True)
    assert parts_of(parallel)[:4] == [HeadsPart(0, 0), MLPPart(0, 0), HeadsPart(1, 2), MLPPart(1, 2)]
    attn_only = dataclasses.replace(ARCH, attn_only=True)
    assert parts_of(attn_only) == [HeadsPart(0, 0), HeadsPart(1, 2), HeadsPart(2, 4)]


class _Linear:
    """A linear pass: each part multiplies what it reads by its own matrix (transposed for the walk back)."""

    def __init__(self, mats: dict[tuple[str, int], torch.Tensor], transpose: bool = False):
        self.mats, self.t = mats, transpose

    def _apply(self, key: tuple[str, int], x: torch.Tensor) -> torch.Tensor:
        m = self.mats[key]
        return x @ (m.T if self.t else m)

    def heads(self, part: HeadsPart, x: torch.Tensor) -> torch.Tensor:
        return self._apply(("heads", part.layer), x)

    def mlp(self, part: MLPPart, x: torch.Tensor) -> torch.Tensor:
        return self._apply(("mlp", part.layer), x)


def _model(arch: Architecture) -> Transformer:
    return Transformer(arch, {"W_E": torch.zeros(arch.d_vocab, arch.d_model, dtype=torch.float64)})


@pytest.mark.parametrize("parallel", [False, True])
def test_walk_is_the_residual_forward_and_walk_back_its_transpose(parallel):
    arch = dataclasses.replace(ARCH, parallel_attn_mlp=parallel)
    tf = _model(arch)
    gen = torch.Generator().manual_seed(0)
    mats = {(k, layer): torch.randn(6, 6, generator=gen, dtype=torch.float64) for k in ("heads", "mlp") for layer in range(3)}
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    # by hand: sequential x += A(x); x += M(x); parallel: x += A(x) + M(x)
    want = x
    for layer in range(3):
        a = want @ mats["heads", layer]
        m = (want if parallel else want + a) @ mats["mlp", layer]
        want = want + a + m
    steps = list(tf.walk(x, _Linear(mats)))
    torch.testing.assert_close(steps[-1][3], want)
    mlp_reads = [read for part, read, _, _ in steps if isinstance(part, MLPPart)]
    heads_reads = [read for part, read, _, _ in steps if isinstance(part, HeadsPart)]
    for layer in range(3):  # parallel: the MLP reads the stream before the heads
        assert torch.equal(mlp_reads[layer], heads_reads[layer]) == parallel
    # <g, J x> = <J^T g, x> for the linear map J of the whole walk
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    back = tf.walk_back(g, _Linear(mats, transpose=True))
    torch.testing.assert_close((g * want).sum(), (back * x).sum())
    # and up to a layer: the transpose of the walk that stops after it
    upto = list(tf.walk(x, _Linear(mats), last=1))[-1][3]
    torch.testing.assert_close((g * upto).sum(), (tf.walk_back(g, _Linear(mats, transpose=True), last=1) * x).sum())
