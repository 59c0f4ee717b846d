"""The offline stand-in presets for the field's public zoos."""

from __future__ import annotations

from weightspace.zoo.architectures import get_arch
from weightspace.zoo.presets import get_preset
from weightspace.zoo.tasks import task_families


def test_wild_park_small_is_heterogeneous_and_valid() -> None:
    preset = get_preset("wild-park-small")
    archs = [get_arch(name) for name in preset.archs]  # every name is a valid architecture
    assert len(set(preset.archs)) == len(preset.archs) == 126
    assert {a.family for a in archs} == {"cnn2d"}
    assert all(a.family in task_families(t) for a in archs for t in preset.tasks)
    assert {a.width for a in archs} == {4, 8, 16}
    assert {a.depth for a in archs} == {2, 3, 4, 5}
    assert {a.kernel for a in archs} == {3, 5}
    assert {a.activation for a in archs} == {"relu", "tanh", "gelu"}
    assert {a.residual for a in archs} == {True, False}
    # Held-out-architecture splits need several architectures on each side of every cut.
    assert sum(a.depth == 4 for a in archs) >= 10 and sum(a.width == 16 for a in archs) >= 10
