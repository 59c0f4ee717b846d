r"""``NetworkSpec``: the architecture of a network, separate from its weights.

A spec is a small dataflow program in static single assignment form: a tuple of :class:`Op`
records, each naming the ops whose outputs it reads. It is what a ``torch.fx`` trace reduces to
once BatchNorm is folded away, and it serialises to JSON so that it can travel beside a state dict
(in safetensors metadata, in a zoo table, over HTTP).

Op kinds and their ``attrs``:

==============  ==================================================================================
``input``       ``shape``: the input's shape without the batch dimension, channels first
                (``[64]`` for an MLP on 64 features, ``[1, 8, 8]`` for a 2-D CNN).
``linear``      ``in_features``, ``out_features``, ``bias``.
``conv1d``      ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``,
``conv2d``      ``dilation`` (tuples, one entry per spatial dim), ``bias``.
``activation``  ``function`` (one of :data:`ACTIVATIONS`), ``negative_slope`` (leaky_relu),
                ``approximate`` (gelu), ``w0`` (sine: :math:`\sin(w_0 x)`; when absent it is
                filled in as SIREN does: 30 after the first layer, 1 elsewhere).
``add``         none: the elementwise sum of its inputs (a residual connection).
``pool``        ``mode`` (``avg``/``max``), ``dims`` (1/2), ``kernel_size``, ``stride``,
                ``padding``.
``adaptive_pool`` ``mode``, ``dims``, ``output_size``.
``global_pool`` ``mode``: mean or max over every spatial position, giving ``(B, C)``.
``flatten``     none: ``x.flatten(1)``.
``norm``        ``mode`` (``layer``: LayerNorm, ``rms``: RMSNorm), ``normalized_size`` (the
                neurons normalised together: the last dim of a ``(B, C)`` tensor), ``eps``
                (a float; ``None`` for RMSNorm's dtype default), ``affine`` (a ``weight`` of
                shape ``(C,)``), ``bias`` (LayerNorm only: a ``bias`` of shape ``(C,)``).
``embedding``   ``num_embeddings``, ``embedding_dim``, ``index`` (``token``: looks up the token
                ids of the input; ``position``: row ``t`` for token ``t``, a learned positional
                embedding). State ``{name}.weight`` of shape ``(num_embeddings, embedding_dim)``
                (``nn.Embedding``'s, transposed against a Linear's).
``attention``   ``embed_dim``, ``num_heads``, ``bias``: an ``nn.MultiheadAttention`` (self-
                attention, batch first) reading a token tensor; state ``in_proj_weight``
                ``(3E, E)``, ``in_proj_bias`` ``(3E,)``, ``out_proj.weight`` ``(E, E)``,
                ``out_proj.bias`` ``(E,)`` (biases when ``bias``).
``token_pool``  ``mode`` (``mean`` over tokens, or the ``first`` token): ``(B, T, E)`` to ``(B, E)``.
==============  ==================================================================================

**Token inputs.** An input op with ``layout: "tokens"`` reads sequences: ``shape`` ``[T]`` of
token ids with ``vocab_size`` (the input neurons are the vocabulary; an ``embedding`` op of
index ``token`` must read them), or ``shape`` ``[T, d]`` of ``d`` features per token. Ops then
act on the last (feature) dimension of ``(B, T, features)`` tensors until a ``token_pool``.

Parametrised ops (``linear``, ``conv1d``, ``conv2d``) are named by their state-dict prefix, so a
spec plus ``{f"{op.name}.weight": ..., f"{op.name}.bias": ...}`` is a complete model. A ``norm``
op is named the same way (its affine ``weight`` and ``bias``) but is not one of
:attr:`NetworkSpec.layers`: it has no weight matrix, only one scale and shift per neuron
(:mod:`weightspace.norm` gives the math and its graph form).

:class:`Op` and the constants above live in :mod:`weightspace.spec_ops`, the checks in
:mod:`weightspace.spec_checks`, the builders (:func:`mlp_spec`, :func:`siren_spec`,
:func:`cnn_spec`) in :mod:`weightspace.spec_builders`; this module re-exports them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from weightspace.errors import SpecError
from weightspace.spec_builders import cnn_spec, mlp_spec, siren_spec  # noqa: F401 (re-exported)
from weightspace.spec_checks import _with_sine_defaults, validate_ops
from weightspace.spec_ops import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    EMBEDDING_INDEXES,
    NORM_MODES,
    ODD_ACTIVATIONS,
    OP_KINDS,
    PARAMETRISED_KINDS,
    POSITIVELY_HOMOGENEOUS_ACTIVATIONS,
    SIREN_FIRST_W0,
    SIREN_HIDDEN_W0,
    SPEC_FORMAT_VERSION,
    TOKEN_POOL_MODES,
    Op,
)

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_IDS",
    "PARAMETRISED_KINDS",
    "OP_KINDS",
    "NORM_MODES",
    "EMBEDDING_INDEXES",
    "TOKEN_POOL_MODES",
    "SPEC_FORMAT_VERSION",
    "Op",
    "NetworkSpec",
    "cnn_spec",
    "mlp_spec",
    "siren_spec",
    "ODD_ACTIVATIONS",
    "POSITIVELY_HOMOGENEOUS_ACTIVATIONS",
    "SIREN_FIRST_W0",
    "SIREN_HIDDEN_W0",
]


@dataclass(frozen=True)
class NetworkSpec:
    """The architecture of a feed-forward network as a tuple of :class:`Op`.

    The first op is the ``input``; the last op is the output. Every op reads only ops before it.
    Construct with :meth:`validate` semantics enforced: a malformed spec raises
    :class:`~weightspace.errors.SpecError` at construction.
    """

    ops: tuple[Op, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", _with_sine_defaults(tuple(self.ops)))
        self.validate()

    # ------------------------------------------------------------------ queries
    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.ops[0].attrs["shape"])

    @property
    def output(self) -> Op:
        return self.ops[-1]

    @property
    def layers(self) -> tuple[Op, ...]:
        """The parametrised ops, in execution order."""
        return tuple(op for op in self.ops if op.is_parametrised)

    @property
    def norms(self) -> tuple[Op, ...]:
        """The ``norm`` ops (LayerNorm, RMSNorm), in execution order."""
        return tuple(op for op in self.ops if op.kind == "norm")

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].out_size

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict key → tensor shape, in layer order (weight, then bias)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for op in self.ops:
            if op.is_parametrised:
                shapes[f"{op.name}.weight"] = op.weight_shape()
                if op.attrs.get("bias", True):
                    shapes[f"{op.name}.bias"] = (op.out_size,)
            elif op.kind == "norm":
                size = (int(op.attrs["normalized_size"]),)
                if op.attrs.get("affine", True):
                    shapes[f"{op.name}.weight"] = size
                    if op.attrs["mode"] == "layer" and op.attrs.get("bias", True):
                        shapes[f"{op.name}.bias"] = size
            elif op.kind == "embedding":
                a = op.attrs
                shapes[f"{op.name}.weight"] = (int(a["num_embeddings"]), int(a["embedding_dim"]))
            elif op.kind == "attention":
                e = int(op.attrs["embed_dim"])
                shapes[f"{op.name}.in_proj_weight"] = (3 * e, e)
                if op.attrs.get("bias", True):
                    shapes[f"{op.name}.in_proj_bias"] = (3 * e,)
                shapes[f"{op.name}.out_proj.weight"] = (e, e)
                if op.attrs.get("bias", True):
                    shapes[f"{op.name}.out_proj.bias"] = (e,)
        return shapes

    @property
    def is_tokens(self) -> bool:
        """Whether the input is a sequence of tokens (``layout: "tokens"``)."""
        return self.ops[0].attrs.get("layout") == "tokens"

    @property
    def num_parameters(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    @property
    def activations(self) -> tuple[str, ...]:
        return tuple(op.attrs["function"] for op in self.ops if op.kind == "activation")

    def summary(self) -> str:
        """A short human-readable architecture string, e.g. ``linear64x32-relu-linear32x10``."""
        parts = []
        for op in self.ops[1:]:
            if op.is_parametrised:
                k = "x".join(str(int(k)) for k in op.attrs.get("kernel_size", ()))
                parts.append(f"{op.kind}{op.in_size}x{op.out_size}" + (f"k{k}" if k else ""))
            elif op.kind == "activation":
                parts.append(op.attrs["function"])
            elif op.kind in {"pool", "adaptive_pool", "global_pool"}:
                parts.append(f"{op.attrs['mode']}{op.kind}")
            elif op.kind == "norm":
                parts.append(f"{op.attrs['mode']}norm{op.attrs['normalized_size']}")
            elif op.kind == "embedding":
                a = op.attrs
                parts.append(f"{a['index']}emb{a['num_embeddings']}x{a['embedding_dim']}")
            elif op.kind == "attention":
                parts.append(f"attn{op.attrs['embed_dim']}h{op.attrs['num_heads']}")
            elif op.kind == "token_pool":
                parts.append(f"{op.attrs['mode']}tokens")
            else:
                parts.append(op.kind)
        return "-".join(parts)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check names, references and layer sizes; raise :class:`SpecError` naming the op."""
        validate_ops(self.ops)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": SPEC_FORMAT_VERSION, "ops": [op.to_dict() for op in self.ops]}

    def to_json(self) -> str:
        """The spec as compact JSON: the one spec format every weightspace tool reads and writes.

        It is stored in a safetensors file's metadata under ``weightspace_spec`` (by
        ``weightspace convert`` and :func:`weightspace.ingest.save_checkpoint`), printed as the
        ``spec`` member of ``weightspace inspect --json``, and read back by ``--spec FILE``
        (which accepts either that whole ``inspect --json`` output or the bare object)::

            {"format_version": 1,
             "ops": [{"name": "x", "kind": "input", "inputs": [], "attrs": {"shape": [64]}},
                     {"name": "0", "kind": "linear", "inputs": ["x"],
                      "attrs": {"in_features": 64, "out_features": 32, "bias": true}},
                     {"name": "1", "kind": "activation", "inputs": ["0"],
                      "attrs": {"function": "relu"}},
                     {"name": "2", "kind": "linear", "inputs": ["1"],
                      "attrs": {"in_features": 32, "out_features": 10, "bias": true}}]}

        ``ops`` is in topological order, starting with the single ``input`` op; each op lists the
        ops it reads in ``inputs``; the kinds and their ``attrs`` are tabled in this module's
        docstring. A parametrised op's ``name`` is its state-dict prefix (``"0"`` reads
        ``0.weight`` and ``0.bias``); the last op is the output. (This example is
        ``mlp_spec([64, 32, 10]).to_json()``, indented.)
        """
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        if (
            isinstance(data, Mapping)
            and "ops" not in data
            and isinstance(data.get("spec"), Mapping)
        ):
            data = data["spec"]  # the whole `weightspace inspect --json` output
        if not isinstance(data, Mapping) or "ops" not in data:
            raise SpecError("a spec must be a JSON object with an 'ops' list")
        version = int(data.get("format_version", SPEC_FORMAT_VERSION))
        if version > SPEC_FORMAT_VERSION:
            raise SpecError(
                f"spec format version {version} is newer than this weightspace understands "
                f"({SPEC_FORMAT_VERSION}); upgrade weightspace"
            )
        return cls(ops=tuple(Op.from_dict(o) for o in data["ops"]))

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)
