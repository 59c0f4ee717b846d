"""The Python API: ``Encoder.embed`` takes every form a user holds a model in, and agrees on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import weightspace as ws
from models import tiny_encoder, torch_inputs, torch_mlp, torch_residual_cnn
from weightspace.errors import WeightspaceError
from weightspace.models import ModelInputError, as_spec_and_state
from weightspace.nn import EncoderError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> ws.Encoder:
    return tiny_encoder()


def test_every_model_form_gives_the_same_embedding(encoder: ws.Encoder, tmp_path: Path) -> None:
    module = torch_mlp("tanh")
    spec, state = ws.from_module(module, torch_inputs(module))
    path = ws.save_checkpoint(tmp_path / "mlp.safetensors", spec, state)
    graph = ws.to_graph(spec, state)
    forms = [module, (spec, state), str(path), path, graph, ws.to_module(spec, state)]
    z = encoder.embed(forms)
    assert z.shape == (len(forms), encoder.dim)
    np.testing.assert_allclose(z, np.broadcast_to(z[0], z.shape), atol=1e-5)
    other = encoder.embed([torch_mlp("tanh", seed=2)])  # different weights: a different point
    assert np.abs(other[0] - z[0]).max() > 1e-3


def test_module_trace_infers_the_example_from_a_first_linear_layer() -> None:
    module = torch_mlp("relu")
    spec, _ = as_spec_and_state(module)
    assert spec.input_shape == (6,)
    spec_given, state_given = as_spec_and_state((module, torch_inputs(module)))
    assert spec_given == spec
    # the traced pair computes what the module computes
    x = torch_inputs(module)
    torch.testing.assert_close(ws.to_module(spec_given, state_given)(x), module(x))


def test_conv_module_with_flatten_needs_an_example_input(encoder: ws.Encoder) -> None:
    module = torch_residual_cnn("relu")
    with pytest.raises(EncoderError, match="example input"):
        encoder.embed([module])
    z = encoder.embed([(module, torch_inputs(module))])
    assert z.shape == (1, encoder.dim) and np.isfinite(z).all()


def test_conv_module_without_flatten_needs_no_example() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module.append(nn.Linear(4, 2))
    spec, _ = as_spec_and_state(module)
    assert spec.input_shape[0] == 1


def test_bad_inputs_are_one_line_errors(encoder: ws.Encoder, tmp_path: Path) -> None:
    with pytest.raises(ModelInputError, match=r"model #0: expected a checkpoint path"):
        as_spec_and_state(42, index=0)  # type: ignore[arg-type]
    with pytest.raises(EncoderError, match="model #1"):
        encoder.embed([torch_mlp("relu"), b"not a model object"])
    with pytest.raises(EncoderError, match=r"embed\(\[model\]\)"):
        encoder.embed(torch_mlp("relu"))  # one module, not a list of them
    with pytest.raises(WeightspaceError, match="missing.safetensors"):
        encoder.embed([tmp_path / "missing.safetensors"])
