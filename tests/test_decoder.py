"""The decoder: shapes, a short training lowers the functional loss, persistence, embedding merge."""

from __future__ import annotations

import pytest
import torch

from models import make_state_dict
from weightspace.module import to_module
from weightspace.nn.encoder import Encoder, EncoderConfig
from weightspace.spec import mlp_spec
from weightspace.synthesis import SynthesisError, merge
from weightspace.synthesis.decoder import (
    Decoder,
    DecoderConfig,
    DecoderExample,
    Synthesizer,
    fit_decoder,
    functional_logits,
)
from weightspace.zoo.tasks import get_task

SPEC = mlp_spec([13, 6, 3], "relu")  # wine


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    config = EncoderConfig(
        hidden=16,
        edge_hidden=8,
        num_layers=1,
        pool_heads=2,
        embedding_dim=8,
        head_hidden=8,
        projection_dim=8,
    )
    return Encoder(config).eval()


@pytest.fixture(scope="module")
def examples() -> list[DecoderExample]:
    return [
        DecoderExample(SPEC, make_state_dict(SPEC, seed=s, dtype=torch.float32), "wine", f"r{s}")
        for s in range(8)
    ]


def _functional_loss(decoder: Decoder, encoder: Encoder, examples: list[DecoderExample]) -> float:
    x = get_task("wine").features["train"]
    z = torch.as_tensor(encoder.embed([(e.spec, e.state_dict) for e in examples]))
    with torch.no_grad():
        decoded = functional_logits(SPEC, decoder(z, SPEC), x)
        target = torch.stack([to_module(SPEC, e.state_dict)(x) for e in examples])
    return float((decoded - target).pow(2).mean())


def test_short_training_lowers_the_functional_loss(encoder, examples) -> None:
    untrained = fit_decoder(encoder, examples, DecoderConfig(steps=0, hidden=32))
    trained = fit_decoder(
        encoder, examples, DecoderConfig(steps=150, hidden=32, batch_size=8, mix_fraction=0.25)
    )
    before = _functional_loss(untrained, encoder, examples)
    after = _functional_loss(trained, encoder, examples)
    assert after < 0.7 * before, (before, after)
    assert trained.log and trained.log[-1]["step"] == 150


def test_decoded_weights_have_the_target_shapes(encoder, examples) -> None:
    decoder = fit_decoder(encoder, examples[:3], DecoderConfig(steps=2, hidden=16))
    states = decoder.decode(torch.randn(4, encoder.dim), SPEC)
    assert len(states) == 4
    for state in states:
        assert {k: tuple(v.shape) for k, v in state.items()} == SPEC.param_shapes()
    with pytest.raises(SynthesisError, match="no head"):
        decoder.decode(torch.randn(1, encoder.dim), mlp_spec([13, 7, 3]))


def test_decoder_round_trips_and_merges(tmp_path, encoder, examples) -> None:
    decoder = fit_decoder(encoder, examples[:4], DecoderConfig(steps=5, hidden=16, weight_loss=0.1))
    encoder.save(tmp_path)
    decoder.save(tmp_path)
    loaded = Decoder.load(tmp_path)
    z = torch.randn(2, encoder.dim)
    for a, b in zip(decoder.decode(z, SPEC), loaded.decode(z, SPEC), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    synth = Synthesizer.load(tmp_path)
    a, b = examples[0].state_dict, examples[1].state_dict
    result = merge("embedding", SPEC, a, SPEC, b, 0.5, synthesizer=synth)
    assert result.spec == SPEC
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == SPEC.param_shapes()


def test_missing_decoder_says_how_to_train_one(tmp_path) -> None:
    with pytest.raises(SynthesisError, match="train-decoder"):
        Decoder.load(tmp_path)
