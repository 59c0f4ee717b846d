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
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from weightspace.errors import SpecError

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
    "mlp_spec",
    "siren_spec",
    "ODD_ACTIVATIONS",
    "POSITIVELY_HOMOGENEOUS_ACTIVATIONS",
    "SIREN_FIRST_W0",
    "SIREN_HIDDEN_W0",
]

SPEC_FORMAT_VERSION = 1

#: Elementwise activations a spec can hold; the index is the node feature ``node_activation``.
ACTIVATIONS: tuple[str, ...] = (
    "identity",
    "relu",
    "leaky_relu",
    "tanh",
    "gelu",
    "silu",
    "sigmoid",
    "sine",  # appended last: ids of the others (and trained encoders' tables) stay as they were
)
ACTIVATION_IDS: dict[str, int] = {name: i for i, name in enumerate(ACTIVATIONS)}
#: Activations with :math:`\sigma(-z) = -\sigma(z)`: their neurons admit sign flips.
ODD_ACTIVATIONS: frozenset[str] = frozenset({"identity", "tanh", "sine"})
#: Activations with :math:`\sigma(cz) = c\,\sigma(z)` for :math:`c > 0`: their neurons admit
#: positive rescaling (sine does not: :math:`\sin(w_0 c z) \ne c \sin(w_0 z)`).
POSITIVELY_HOMOGENEOUS_ACTIVATIONS: frozenset[str] = frozenset({"identity", "relu", "leaky_relu"})
#: SIREN's (Sitzmann et al. 2020) frequency scale after the first layer, and elsewhere.
SIREN_FIRST_W0 = 30.0
SIREN_HIDDEN_W0 = 1.0

PARAMETRISED_KINDS: frozenset[str] = frozenset({"linear", "conv1d", "conv2d"})
OP_KINDS: frozenset[str] = PARAMETRISED_KINDS | {
    "input",
    "activation",
    "add",
    "pool",
    "adaptive_pool",
    "global_pool",
    "flatten",
    "norm",
    "embedding",
    "attention",
    "token_pool",
}
#: ``index`` of an ``embedding`` op; ``mode`` of a ``token_pool`` op.
EMBEDDING_INDEXES: tuple[str, ...] = ("token", "position")
TOKEN_POOL_MODES: tuple[str, ...] = ("mean", "first")
#: ``mode`` of a ``norm`` op: LayerNorm (centre and scale) or RMSNorm (scale only).
NORM_MODES: tuple[str, ...] = ("layer", "rms")


def _freeze(value: Any) -> Any:
    """Lists become tuples, so that attrs compare equal after a JSON round trip."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Op:
    """One operation of a :class:`NetworkSpec`.

    Args:
        name: unique name; for parametrised ops, the state-dict prefix (``"features.0"``).
        kind: one of :data:`OP_KINDS`.
        inputs: names of the ops whose outputs this op reads, in argument order.
        attrs: kind-specific attributes (see the module docstring); sequences are tuples.
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise SpecError(
                f"op {self.name!r}: unknown kind {self.kind!r}; valid: {sorted(OP_KINDS)}"
            )
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", {k: _freeze(v) for k, v in self.attrs.items()})

    @property
    def is_parametrised(self) -> bool:
        return self.kind in PARAMETRISED_KINDS

    @property
    def in_size(self) -> int:
        """Input features (linear) or channels (conv)."""
        return int(self.attrs["in_features" if self.kind == "linear" else "in_channels"])

    @property
    def out_size(self) -> int:
        """Output features (linear) or channels (conv)."""
        return int(self.attrs["out_features" if self.kind == "linear" else "out_channels"])

    @property
    def kernel_numel(self) -> int:
        """Number of weights per (output, input) pair: 1 for linear, prod(kernel_size) for conv."""
        if self.kind == "linear":
            return 1
        n = 1
        for k in self.attrs["kernel_size"]:
            n *= int(k)
        return n

    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_size, self.in_size)
        return (self.out_size, self.in_size, *(int(k) for k in self.attrs["kernel_size"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "attrs": {k: _thaw(v) for k, v in self.attrs.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Op:
        try:
            return cls(
                name=str(data["name"]),
                kind=str(data["kind"]),
                inputs=tuple(data.get("inputs", ())),
                attrs=dict(data.get("attrs", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"malformed op record {data!r}: {exc}") from None


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
        if not self.ops:
            raise SpecError("a NetworkSpec needs at least an input op and one layer")
        if self.ops[0].kind != "input":
            raise SpecError(f"the first op must be the input, got {self.ops[0].kind!r}")
        if "shape" not in self.ops[0].attrs or not self.ops[0].attrs["shape"]:
            raise SpecError("the input op needs a non-empty 'shape' attribute")
        _check_input_layout(self.ops[0])
        seen: set[str] = set()
        for op in self.ops:
            if op.name in seen:
                raise SpecError(f"op name {op.name!r} is used twice")
            for src in op.inputs:
                if src not in seen:
                    raise SpecError(f"op {op.name!r} reads {src!r}, which is not defined before it")
            if op.kind == "input" and op is not self.ops[0]:
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
                _check_token_op(op, self.ops[0])
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
        if not self.layers:
            raise SpecError("a NetworkSpec needs at least one linear or conv layer")

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


def siren_spec(
    sizes: list[int] | tuple[int, ...],
    *,
    first_w0: float = SIREN_FIRST_W0,
    hidden_w0: float = SIREN_HIDDEN_W0,
) -> NetworkSpec:
    r"""The spec of a SIREN: ``Linear, sin(w0 ·), …, Linear`` (no activation after the last).

    Layer :math:`l` computes :math:`h_l = \sin(w_{0,l}\,(W_l h_{l-1} + b_l))`, with
    :math:`w_{0,1}` = ``first_w0`` and :math:`w_{0,l}` = ``hidden_w0`` after. An INR takes
    coordinates (``sizes[0]``, e.g. 2 for an image) and returns intensities (``sizes[-1]``).
    """
    spec = mlp_spec(sizes, "sine")
    ops, seen = [], 0
    for op in spec.ops:
        if op.kind == "activation":
            seen += 1
            op = Op(
                op.name,
                op.kind,
                op.inputs,
                {**op.attrs, "w0": first_w0 if seen == 1 else hidden_w0},
            )
        ops.append(op)
    return NetworkSpec(tuple(ops))


def mlp_spec(
    sizes: list[int] | tuple[int, ...],
    activation: str = "relu",
    *,
    prefix: str = "",
    bias: bool = True,
    norm: str | None = None,
    eps: float = 1e-5,
) -> NetworkSpec:
    """The spec of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``.

    Args:
        sizes: ``[n_in, h_1, ..., n_out]``.
        activation: the activation between layers (none after the last).
        prefix: state-dict prefix (``""`` gives keys ``"0.weight"``, ``"2.weight"``, ...).
        bias: whether every layer has a bias.
        norm: ``"layer"`` or ``"rms"`` to put an affine ``nn.LayerNorm`` / ``nn.RMSNorm`` after
            every hidden layer, before its activation (``Linear, norm, act, Linear, ...``).
        eps: the norms' epsilon.
    """
    if norm is not None and norm not in NORM_MODES:
        raise SpecError(f"norm must be one of {list(NORM_MODES)} or None, got {norm!r}")
    if len(sizes) < 2:
        raise SpecError("an MLP needs at least an input and an output size")
    ops = [Op("x", "input", (), {"shape": (int(sizes[0]),)})]
    prev = "x"
    index = 0
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        name = f"{prefix}{index}"
        ops.append(
            Op(name, "linear", (prev,), {"in_features": n_in, "out_features": n_out, "bias": bias})
        )
        prev = name
        index += 1
        if i < len(sizes) - 2 and norm is not None:
            norm_name = f"{prefix}{index}"
            attrs = {"mode": norm, "normalized_size": n_out, "eps": eps, "affine": True}
            if norm == "layer":
                attrs["bias"] = True
            ops.append(Op(norm_name, "norm", (prev,), attrs))
            prev = norm_name
            index += 1
        if i < len(sizes) - 2:
            act_name = f"{prefix}{index}"
            ops.append(Op(act_name, "activation", (prev,), {"function": activation}))
            prev = act_name
            index += 1
    return NetworkSpec(tuple(ops))
