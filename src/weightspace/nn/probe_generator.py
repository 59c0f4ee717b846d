r"""The learned probes of the encoder's probe branch: :class:`ProbeGenerator`, ``P`` inputs per
input domain from a shared deep linear generator (ProbeGen style; the module docstring of
:mod:`weightspace.nn.probes` has the math), and :meth:`ProbeGenerator.start_at`, which starts
them exactly at given inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.nn.probe_domains import ProbeError, _domain_shape

__all__ = ["ProbeGenerator"]


class ProbeGenerator(nn.Module):
    r"""``P`` learned probes per input domain from a shared deep linear generator.

    .. math::
        X_D = \operatorname{reshape}\big(U_D W_1^\top W_2^\top W_3^\top + b + R_D\big)
        \in \mathbb{R}^{P \times D}

    with latent codes :math:`U_D \in \mathbb{R}^{P \times k}`, linear maps
    :math:`k \to h \to h \to |D|` (see the module docstring) and a fixed offset :math:`R_D`
    (a buffer, zero unless the probes start at given inputs). ``init="gauss"``: at
    initialisation the last layer is scaled so the probes have unit standard deviation, like
    standardised inputs. ``init="task"``: each domain whose source (:mod:`weightspace.nn.probe_init`)
    gives inputs :math:`T` starts exactly at :math:`X_D = T` (:meth:`start_at`); the others
    stay Gaussian.

    Args:
        domains: domain keys (:func:`domain_key`), e.g. ``("64", "1x8x8")``.
        probes: ``P``.
        latent: ``k``.
        hidden: ``h``.
        init: ``"gauss"`` or ``"task"``.
        sources: with ``init="task"``, one source string per domain
            (:func:`~weightspace.nn.probe_init.resolve_probe_sources`).
        seed: seeds the choice of rows of each source.

    Shapes:
        - ``generator(key)``: ``(P, *input_shape)``
    """

    def __init__(
        self,
        domains: Sequence[str],
        probes: int,
        latent: int,
        hidden: int,
        *,
        init: str = "gauss",
        sources: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        from weightspace.nn.probe_init import check_probe_init, init_deferred, source_inputs

        super().__init__()
        self.domains = tuple(domains)
        self.probes = probes
        self.init = check_probe_init(init)
        if init == "task" and len(sources) != len(self.domains):
            raise ProbeError(
                f"probe_init 'task' needs one probe source per domain: {len(self.domains)} "
                f"domains {list(self.domains)}, {len(sources)} sources {list(sources)}"
            )
        self.codes = nn.ParameterDict(
            {key: nn.Parameter(torch.randn(probes, latent)) for key in self.domains}
        )
        self.generators = nn.ModuleDict(
            {
                key: nn.Sequential(
                    nn.Linear(latent, hidden),
                    nn.Linear(hidden, hidden),
                    nn.Linear(hidden, math.prod(_domain_shape(key))),
                )
                for key in self.domains
            }
        )
        with torch.no_grad():
            for key in self.domains:
                std = float(self.generators[key](self.codes[key]).std())
                self.generators[key][-1].weight.div_(max(std, 1e-6))
                self.generators[key][-1].bias.zero_()
        if init == "gauss":
            return
        for key in self.domains:
            self.register_buffer(
                f"offset_{key}", torch.zeros(probes, math.prod(_domain_shape(key)))
            )
        if init_deferred():  # the caller loads the probes' weights next
            return
        for key, source in zip(self.domains, sources, strict=True):
            inputs = source_inputs(source, key, probes, seed)
            if inputs is not None:
                self.start_at(key, inputs)

    def _offset(self, key: str) -> Tensor | None:
        if self.init == "gauss":
            return None
        return getattr(self, f"offset_{key}")

    @torch.no_grad()
    def start_at(self, key: str, inputs: Tensor) -> None:
        r"""Set domain ``key``'s generator so that it produces exactly ``inputs`` ``(P, *shape)``.

        With :math:`T \in \mathbb{R}^{P \times D}` the flattened inputs, :math:`\mu` their mean
        row and :math:`C = T - \mathbf{1}\mu^\top = V \Sigma Q^\top` (SVD), keep the first
        :math:`q = \min(k, P, D)` components :math:`C_q = V_q \Sigma_q Q_q^\top`, then

        * codes :math:`U = [\sqrt{P}\, V_q,\ U_{\text{rest}}]` (the first :math:`q` columns
          replaced, the other :math:`k - q` kept at their Gaussian draw), so
          :math:`\operatorname{col}(C_q) \subseteq \operatorname{col}(U)`;
        * :math:`W_1, W_2` kept at their random initialisation, biases of the first two layers
          zero, so the hidden codes are :math:`H = U W_1^\top W_2^\top` with
          :math:`\operatorname{col}(H) = \operatorname{col}(U)` (:math:`W_2 W_1` has full
          column rank :math:`k` almost surely when :math:`h \ge k`);
        * :math:`W_3^\top = H^{+} C_q` (least squares, float64), exact since
          :math:`\operatorname{col}(C_q) \subseteq \operatorname{col}(H)`; last bias
          :math:`b = \mu`;
        * the fixed offset :math:`R = T - (H W_3^\top + b)`, evaluated by this generator's own
          float arithmetic, so :math:`X = T` to rounding (about one ulp of :math:`T`).

        :math:`R` is :math:`C - C_q`, the part of the inputs beyond rank :math:`k` (zero for
        :math:`D \le k`, e.g. 2-D coordinates), plus rounding. Training moves the probes
        through the deep linear generator only, as from a Gaussian start; the offset stays.
        """
        if key not in self.generators:
            raise KeyError(key)
        offset = self._offset(key)
        if offset is None:
            raise ProbeError("start_at needs a generator built with init='task'")
        p = self.probes
        target = inputs.reshape(p, -1).double()  # (P, D)
        if target.shape[1] != offset.shape[1]:
            raise ProbeError(
                f"start_at: inputs of {target.shape[1]} values for domain {key!r} of "
                f"{offset.shape[1]}"
            )
        first, second, last = self.generators[key]
        codes = self.codes[key]
        mean = target.mean(0)
        left, singular, right = torch.linalg.svd(target - mean, full_matrices=False)
        q = min(codes.shape[1], *target.shape)
        reduced = (left[:, :q] * singular[:q]) @ right[:q]  # (P, D) C_q
        new_codes = codes.detach().double().clone()
        new_codes[:, :q] = math.sqrt(p) * left[:, :q]
        hidden = new_codes @ first.weight.double().T @ second.weight.double().T  # (P, h)
        solution = torch.linalg.lstsq(hidden, reduced, driver="gelsd").solution  # (h, D)
        codes.copy_(new_codes)
        first.bias.zero_()
        second.bias.zero_()
        last.weight.copy_(solution.T)
        last.bias.copy_(mean)
        offset.zero_()
        produced = self.generators[key](codes).reshape(p, -1)
        offset.copy_(inputs.reshape(p, -1).to(offset.dtype) - produced.to(offset.dtype))

    def forward(self, key: str) -> Tensor:
        if key not in self.generators:
            raise KeyError(key)
        flat = self.generators[key](self.codes[key])  # (P, |D|)
        offset = self._offset(key)
        if offset is not None:
            flat = flat + offset.to(flat.dtype)
        return flat.view(self.probes, *_domain_shape(key))

    def all(self) -> dict[str, Tensor]:
        """The probes of every domain."""
        return {key: self(key) for key in self.domains}

    def extra_repr(self) -> str:
        start = "" if self.init == "gauss" else f", init={self.init!r}"
        return f"domains={list(self.domains)}, probes={self.probes}{start}"
