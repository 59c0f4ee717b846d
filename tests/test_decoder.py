"""The decoder: shapes, a short training lowers the functional loss, persistence, embedding merge."""

from __future__ import annotations

import pytest
import torch

from models import make_state_dict, tiny_encoder
from weightspace.module import to_module
from weightspace.nn.encoder import Encoder
from weightspace.spec import mlp_spec
from weightspace.synthesis import SynthesisError, merge
from weightspace.synthesis.decoder import (
    Decoder,
    DecoderConfig,
    DecoderExample,
    Synthesizer,
    fit_decoder,
    functional_logits,
    warmup_cosine,
)
from weightspace.zoo.tasks import get_task

SPEC = mlp_spec([13, 6, 3], "relu")  # wine


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return tiny_encoder()


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


def test_decoded_models_run_with_the_target_spec(tmp_path, encoder, examples) -> None:
    from weightspace.ingest import load_checkpoint, save_checkpoint

    decoder = fit_decoder(encoder, examples[:3], DecoderConfig(steps=3, hidden=16))
    x = get_task("wine").features["test"]
    for i, state in enumerate(decoder.decode(torch.randn(2, encoder.dim), SPEC)):
        path = save_checkpoint(tmp_path / f"d{i}.safetensors", SPEC, state)
        spec, loaded = load_checkpoint(path)
        assert spec == SPEC
        out = to_module(spec, loaded)(x)
        assert out.shape == (len(x), 3) and torch.isfinite(out).all()


def test_a_cached_embedding_table_gives_the_same_decoder(encoder, examples) -> None:
    config = DecoderConfig(steps=4, hidden=16)
    table = torch.as_tensor(encoder.embed([(e.spec, e.state_dict) for e in examples[:4]]))
    a = fit_decoder(encoder, examples[:4], config)
    b = fit_decoder(encoder, examples[:4], config, embeddings=table)
    z = torch.randn(2, encoder.dim)
    for sa, sb in zip(a.decode(z, SPEC), b.decode(z, SPEC), strict=True):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key])
    with pytest.raises(SynthesisError, match="embedding table of shape"):
        fit_decoder(encoder, examples[:4], config, embeddings=table[:3])


def test_validation_keeps_the_best_step(encoder, examples) -> None:
    config = DecoderConfig(steps=40, hidden=16, batch_size=4, eval_every=10)
    decoder = fit_decoder(encoder, examples[:5], config, validation=examples[5:])
    checks = [r["val_agreement"] for r in decoder.log if "step" in r and "val_agreement" in r]
    best = decoder.log[-1]
    assert best["best_step"] in (10.0, 20.0, 30.0, 40.0)
    assert best["val_agreement"] >= max(checks) - 1e-12  # the kept weights beat the last


def test_time_limit_ends_training_early(encoder, examples) -> None:
    import time

    start = time.perf_counter()
    decoder = fit_decoder(
        encoder, examples[:4], DecoderConfig(steps=100_000, hidden=16, time_limit=0.5)
    )
    assert time.perf_counter() - start < 10
    last = max(r["step"] for r in decoder.log if "step" in r)
    assert 0 < last < 100_000
    assert decoder.log[-1].get("stopped_by_time_limit") == 1.0  # said, not hidden
    uncapped = fit_decoder(encoder, examples[:4], DecoderConfig(steps=5, hidden=16))
    assert not any("stopped_by_time_limit" in r for r in uncapped.log)


def test_a_safety_cap_that_is_not_reached_changes_nothing(encoder, examples) -> None:
    """Training is bounded by steps: the schedule never reads the clock."""
    config = DecoderConfig(steps=12, hidden=16, batch_size=4)
    capped = DecoderConfig(steps=12, hidden=16, batch_size=4, time_limit=3600.0)
    a = fit_decoder(encoder, examples[:4], config)
    b = fit_decoder(encoder, examples[:4], capped)
    for key, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[key]), key


def test_warmup_cosine_schedule() -> None:
    peak, total = 2e-3, 100
    assert warmup_cosine(0.0, peak, total) == pytest.approx(peak * 0.01 / 0.05)
    assert warmup_cosine(0.05, peak, total) == pytest.approx(peak)
    assert warmup_cosine(1.0, peak, total) == pytest.approx(0.05 * peak)
    later = [warmup_cosine(t / 10, peak, total) for t in range(1, 11)]
    assert all(x >= y for x, y in zip(later, later[1:], strict=False))


def test_a_decoder_fits_any_fixed_codes_without_an_encoder(encoder, examples) -> None:
    """``encoder=None``: the codes are the given table (any width); same fit as with the encoder
    when the table holds the encoder's embeddings."""
    config = DecoderConfig(steps=4, hidden=16)
    table = torch.as_tensor(encoder.embed([(e.spec, e.state_dict) for e in examples[:4]]))
    a = fit_decoder(encoder, examples[:4], config, embeddings=table)
    b = fit_decoder(None, examples[:4], config, embeddings=table)
    assert b.encoder_fingerprint == "" and b.embedding_dim == encoder.dim
    z = torch.randn(2, encoder.dim)
    for sa, sb in zip(a.decode(z, SPEC), b.decode(z, SPEC), strict=True):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key])
    wide = torch.randn(4, 7)
    c = fit_decoder(
        None,
        examples[:4],
        config,
        embeddings=wide,
        validation=examples[4:6],
        validation_embeddings=torch.randn(2, 7),
    )
    assert c.embedding_dim == 7 and len(c.decode(wide[:2], SPEC)) == 2
    with pytest.raises(SynthesisError, match="must be given"):
        fit_decoder(None, examples[:4], config)
    with pytest.raises(SynthesisError, match="must be given"):
        fit_decoder(None, examples[:4], config, embeddings=wide, validation=examples[4:6])
    with pytest.raises(SynthesisError, match="embedding table of shape"):
        fit_decoder(None, examples[:4], config, embeddings=torch.randn(3, 7))
