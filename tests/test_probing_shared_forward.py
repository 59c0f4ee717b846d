"""The probing baseline runs models through the encoder's probe forward (issue 14): the
``probing-gauss`` row and :func:`weightspace.nn.probes.probe_forward` give the same outputs on
the same inputs, for classifiers (log-softmax) and one-output INRs (raw intensity)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from weightspace import mlp_spec, to_graph
from weightspace.baselines import reference
from weightspace.baselines.reference import Probing, _gaussian_inputs
from weightspace.evaluate.api import ModelSet
from weightspace.nn.probes import domain_key, probe_forward
from weightspace.zoo.inr_fit import siren_spec


def _models(spec, count: int, seed: int = 0) -> ModelSet:
    generator = torch.Generator().manual_seed(seed)
    graphs = [
        to_graph(
            spec,
            {k: torch.randn(*s, generator=generator) * 0.5 for k, s in spec.param_shapes().items()},
        )
        for _ in range(count)
    ]
    rows = [{"checkpoint_id": f"m{i}", "run_id": f"r{i}"} for i in range(count)]
    return ModelSet(graphs, pd.DataFrame(rows))


@pytest.mark.parametrize(
    "spec", [mlp_spec([13, 6, 3]), mlp_spec([13, 5, 5, 3], "tanh"), siren_spec(8, 2, 30.0)]
)
def test_probing_embedding_equals_probe_forward(spec):
    models = _models(spec, 5)
    probing = Probing(probes=12, seed=4, tune=False).fit(models, None)
    z = probing.embed(models)  # (N, P * C)
    x = _gaussian_inputs(spec, 12, 4)
    direct = probe_forward(list(models.graphs), {domain_key(spec): x}, spec.num_outputs)
    assert bool(direct.runnable.all())
    expected = direct.log_probs.flatten(1).double().numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    # and the outputs carry each model's function: two models differ
    assert not np.allclose(z[0], z[1], atol=1e-3)


def test_probing_calls_the_shared_probe_forward(monkeypatch):
    calls: list[int] = []
    original = probe_forward

    def counting(graphs, probes, classes, **kwargs):
        calls.append(len(graphs))
        return original(graphs, probes, classes, **kwargs)

    monkeypatch.setattr("weightspace.nn.probes.probe_forward", counting)
    spec = mlp_spec([13, 6, 3])
    models = _models(spec, 4)
    Probing(probes=8, tune=False).fit(models, None).embed(models)
    assert calls and sum(calls) == 2 * len(models)  # fit and embed, every model once each
    assert reference.probe_outputs(list(models.graphs), _gaussian_inputs(spec, 8, 0))[1].all()
