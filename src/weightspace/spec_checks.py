"""Validating a :class:`~weightspace.spec.NetworkSpec`'s ops, and SIREN's default ``w0``.

Every check raises :class:`~weightspace.errors.SpecError` naming the op and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from weightspace.errors import SpecError
from weightspace.spec_ops import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    EMBEDDING_INDEXES,
    NORM_MODES,
    PARAMETRISED_KINDS,
    SIREN_FIRST_W0,
    SIREN_HIDDEN_W0,
    TOKEN_POOL_MODES,
    Op,
)

__all__ = ["validate_ops"]


def validate_ops(ops: Sequence[Op]) -> None:
    """Check names, references and layer sizes; raise :class:`SpecError` naming the op."""
    if not ops:
        raise SpecError("a NetworkSpec needs at least an input op and one layer")
    if ops[0].kind != "input":
        raise SpecError(f"the first op must be the input, got {ops[0].kind!r}")
    if "shape" not in ops[0].attrs or not ops[0].attrs["shape"]:
        raise SpecError("the input op needs a non-empty 'shape' attribute")
    _check_input_layout(ops[0])
    seen: set[str] = set()
    for op in ops:
        if op.name in seen:
            raise SpecError(f"op name {op.name!r} is used twice")
        for src in op.inputs:
            if src not in seen:
                raise SpecError(f"op {op.name!r} reads {src!r}, which is not defined before it")
        if op.kind == "input" and op is not ops[0]:
            raise SpecError(f"op {op.name!r}: only the first op may be an input")
        if op.kind != "input" and not op.inputs:
            raise SpecError(f"op {op.name!r} ({op.kind}) has no inputs")
        if op.kind == "add" and len(op.inputs) < 2:
            raise SpecError(f"op {op.name!r}: an add needs at least two inputs")
        if op.kind == "activation":
            fn = op.attrs.get("function")
            if fn not in ACTIVATION_IDS:
                raise SpecError(
                    f"op {op.name!r}: unknown activation {fn!r}; valid: {list(ACTIVATIONS)}"
                )
            if fn == "sine":
                _check_w0(op)
        if op.kind == "norm":
            _check_norm(op)
        if op.kind in {"embedding", "attention", "token_pool"}:
            _check_token_op(op, ops[0])
        if op.is_parametrised:
            required = (
                ("in_features", "out_features")
                if op.kind == "linear"
                else ("in_channels", "out_channels", "kernel_size")
            )
            for key in required:
                if key not in op.attrs:
                    raise SpecError(f"layer {op.name!r} ({op.kind}) lacks attribute {key!r}")
            if op.in_size <= 0 or op.out_size <= 0:
                raise SpecError(f"layer {op.name!r} has a non-positive size")
        seen.add(op.name)
    if not any(op.is_parametrised for op in ops):
        raise SpecError("a NetworkSpec needs at least one linear or conv layer")


def _check_w0(op: Op) -> None:
    """A sine's ``w0`` must be a finite positive number."""
    w0 = op.attrs.get("w0")
    ok = isinstance(w0, int | float) and not isinstance(w0, bool)
    if not ok or not math.isfinite(float(w0)) or float(w0) <= 0:
        raise SpecError(
            f"op {op.name!r}: sine activation has w0={w0!r}; it must be a finite positive number "
            f"(SIREN uses {SIREN_FIRST_W0:g} after the first layer, {SIREN_HIDDEN_W0:g} elsewhere)"
        )


def _check_norm(op: Op) -> None:
    """A norm needs a known mode, a positive size and a finite positive (or absent) eps."""
    if len(op.inputs) != 1:
        raise SpecError(f"op {op.name!r}: a norm reads exactly one tensor")
    mode = op.attrs.get("mode")
    if mode not in NORM_MODES:
        raise SpecError(f"op {op.name!r}: norm mode {mode!r} is not one of {list(NORM_MODES)}")
    size = op.attrs.get("normalized_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise SpecError(f"op {op.name!r}: normalized_size={size!r} must be a positive integer")
    eps = op.attrs.get("eps")
    if eps is None and mode == "rms":
        return
    ok = isinstance(eps, int | float) and not isinstance(eps, bool)
    if not ok or not math.isfinite(float(eps)) or float(eps) <= 0:
        raise SpecError(f"op {op.name!r}: {mode} norm eps={eps!r} must be a finite positive number")


def _positive_int(op: Op, key: str) -> int:
    value = op.attrs.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpecError(f"op {op.name!r} ({op.kind}): {key}={value!r} must be a positive integer")
    return value


def _check_input_layout(op: Op) -> None:
    """A token input: ``[T]`` ids with a ``vocab_size``, or ``[T, d]`` features."""
    layout = op.attrs.get("layout")
    if layout is None:
        return
    if layout != "tokens":
        raise SpecError(f"input {op.name!r}: layout {layout!r} is unknown; valid: ['tokens']")
    shape = op.attrs["shape"]
    if len(shape) not in (1, 2) or any(not isinstance(s, int) or s <= 0 for s in shape):
        raise SpecError(
            f"input {op.name!r}: a token input has shape [T] (ids) or [T, d] (features), got "
            f"{list(shape)}"
        )
    if len(shape) == 1:
        _positive_int(op, "vocab_size")


def _check_token_op(op: Op, first: Op) -> None:
    """Embedding, attention and token pooling need a token input and sane sizes."""
    if first.attrs.get("layout") != "tokens":
        raise SpecError(
            f"op {op.name!r} ({op.kind}) needs a token input (input attrs layout='tokens')"
        )
    if len(op.inputs) != 1:
        raise SpecError(f"op {op.name!r} ({op.kind}) reads exactly one tensor")
    if op.kind == "embedding":
        _positive_int(op, "num_embeddings")
        _positive_int(op, "embedding_dim")
        index = op.attrs.get("index")
        if index not in EMBEDDING_INDEXES:
            raise SpecError(
                f"op {op.name!r}: embedding index {index!r} is not one of {list(EMBEDDING_INDEXES)}"
            )
        if index == "token":
            vocab = first.attrs.get("vocab_size")
            if op.inputs[0] != first.name or vocab is None:
                raise SpecError(
                    f"op {op.name!r}: a token embedding reads the token-id input directly"
                )
            if int(op.attrs["num_embeddings"]) != int(vocab):
                raise SpecError(
                    f"op {op.name!r}: num_embeddings={op.attrs['num_embeddings']} differs from "
                    f"the input's vocab_size={vocab}"
                )
        elif int(op.attrs["num_embeddings"]) < int(first.attrs["shape"][0]):
            raise SpecError(
                f"op {op.name!r}: {op.attrs['num_embeddings']} positions for sequences of "
                f"{first.attrs['shape'][0]} tokens"
            )
    elif op.kind == "attention":
        e, h = _positive_int(op, "embed_dim"), _positive_int(op, "num_heads")
        if e % h:
            raise SpecError(f"op {op.name!r}: embed_dim={e} is not a multiple of num_heads={h}")
    elif op.attrs.get("mode") not in TOKEN_POOL_MODES:
        raise SpecError(
            f"op {op.name!r}: token_pool mode {op.attrs.get('mode')!r} is not one of "
            f"{list(TOKEN_POOL_MODES)}"
        )


def _with_sine_defaults(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """Record SIREN's default ``w0`` on sine activations that lack one.

    A sine reading (through non-parametrised ops) the output of the first parametrised layer gets
    :data:`SIREN_FIRST_W0`, any other :data:`SIREN_HIDDEN_W0`. The value is stored in the op, so
    the spec's JSON always says which ``w0`` it computes with.
    """
    if not any(op.kind == "activation" and op.attrs.get("function") == "sine" for op in ops):
        return ops
    depth: dict[str, int] = {}  # op name -> number of parametrised layers before (and at) it
    result = []
    for op in ops:
        before = max((depth.get(name, 0) for name in op.inputs), default=0)
        depth[op.name] = before + (1 if op.kind in PARAMETRISED_KINDS else 0)
        if op.kind == "activation" and op.attrs.get("function") == "sine" and "w0" not in op.attrs:
            w0 = SIREN_FIRST_W0 if before == 1 else SIREN_HIDDEN_W0
            op = Op(op.name, op.kind, op.inputs, {**op.attrs, "w0": w0})
        result.append(op)
    return tuple(result)
