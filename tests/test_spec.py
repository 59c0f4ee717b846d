"""NetworkSpec: validation, JSON round trip, layouts."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import SpecError
from weightspace.layout import layout_of
from weightspace.module import apply_activation
from weightspace.spec import (
    ACTIVATIONS,
    ODD_ACTIVATIONS,
    POSITIVELY_HOMOGENEOUS_ACTIVATIONS,
    NetworkSpec,
    Op,
    mlp_spec,
)


def test_json_round_trip_is_exact() -> None:
    spec = mlp_spec([8, 16, 4], "tanh")
    again = NetworkSpec.from_json(spec.to_json())
    assert again == spec
    assert again.param_shapes() == {
        "0.weight": (16, 8),
        "0.bias": (16,),
        "2.weight": (4, 16),
        "2.bias": (4,),
    }
    assert again.num_parameters == 16 * 8 + 16 + 4 * 16 + 4


@pytest.mark.parametrize(
    "ops, message",
    [
        ([], "at least"),
        ([Op("x", "linear", ("y",), {"in_features": 1, "out_features": 1})], "first op"),
        (
            [
                Op("x", "input", (), {"shape": (3,)}),
                Op("a", "activation", ("x",), {"function": "swish"}),
            ],
            "unknown activation",
        ),
        (
            [
                Op("x", "input", (), {"shape": (3,)}),
                Op("a", "linear", ("z",), {"in_features": 3, "out_features": 2}),
            ],
            "not defined",
        ),
        (
            [
                Op("x", "input", (), {"shape": (3,)}),
                Op("x", "linear", ("x",), {"in_features": 3, "out_features": 2}),
            ],
            "used twice",
        ),
        ([Op("x", "input", (), {"shape": (3,)})], "at least one linear"),
    ],
)
def test_malformed_specs_raise(ops: list[Op], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        NetworkSpec(tuple(ops))


def test_unknown_kind_and_newer_format_are_refused() -> None:
    with pytest.raises(SpecError, match="unknown kind"):
        Op("a", "lstm", ("x",))
    data = mlp_spec([2, 2]).to_dict()
    data["format_version"] = 99
    with pytest.raises(SpecError, match="newer"):
        NetworkSpec.from_dict(data)
    with pytest.raises(SpecError, match="not valid JSON"):
        NetworkSpec.from_json("{oops")


def test_mlp_layout_groups_and_symmetries() -> None:
    layout = layout_of(mlp_spec([5, 7, 6, 3], "relu"))
    assert [g.size for g in layout.groups] == [5, 7, 6, 3]
    assert [g.role for g in layout.groups] == [0, 1, 1, 2]
    assert layout.num_nodes == 21
    assert layout.permutable_tie_sets() == [[1], [2]]
    assert layout.scalable_groups() == [1, 2]
    assert layout.sign_flippable_groups() == []
    tanh = layout_of(mlp_spec([5, 7, 3], "tanh"))
    assert tanh.scalable_groups() == [] and tanh.sign_flippable_groups() == [1]
    gelu = layout_of(mlp_spec([5, 7, 3], "gelu"))
    assert gelu.scalable_groups() == [] and gelu.sign_flippable_groups() == []


def test_residual_ties_groups_and_input_ties_block_permutation() -> None:
    ops = (
        Op("x", "input", (), {"shape": (4,)}),
        Op("a", "linear", ("x",), {"in_features": 4, "out_features": 6}),
        Op("r", "activation", ("a",), {"function": "relu"}),
        Op("b", "linear", ("r",), {"in_features": 6, "out_features": 6}),
        Op("s", "add", ("b", "r")),
        Op("c", "linear", ("s",), {"in_features": 6, "out_features": 2}),
    )
    layout = layout_of(NetworkSpec(ops))
    assert layout.residuals == ((1, 2),)
    assert layout.permutable_tie_sets() == [[1, 2]]
    assert layout.scalable_groups() == []  # tied groups are left to the permutation
    skip_from_input = (
        Op("x", "input", (), {"shape": (4,)}),
        Op("a", "linear", ("x",), {"in_features": 4, "out_features": 4}),
        Op("s", "add", ("a", "x")),
        Op("c", "linear", ("s",), {"in_features": 4, "out_features": 2}),
    )
    assert layout_of(NetworkSpec(skip_from_input)).permutable_tie_sets() == []


def test_activation_property_tables_agree_with_the_functions() -> None:
    """The odd / positively homogeneous tables (one place, in spec.py) match what the functions do."""
    z = torch.linspace(-3, 3, 61, dtype=torch.float64)
    for name in ACTIVATIONS:
        attrs = {"function": name, "w0": 30.0}
        odd = torch.allclose(apply_activation(-z, attrs), -apply_activation(z, attrs))
        homogeneous = torch.allclose(
            apply_activation(2.5 * z, attrs), 2.5 * apply_activation(z, attrs)
        )
        assert odd == (name in ODD_ACTIVATIONS), name
        assert homogeneous == (name in POSITIVELY_HOMOGENEOUS_ACTIVATIONS), name
