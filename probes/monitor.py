"""``ProbeMonitor``: score probes live on a model's own forward passes.

The monitor hooks each probe's site and layer and scores every example of
whatever forward runs: the prompt forward (at the probe's position, ``last``
or ``eoi[-k]``, which left padding keeps at fixed offsets from the end) and
each decoding step while generating (the new token). No second forward is
run. State lives on the monitor instance only; hooks are removed on exit.

Example:
    >>> with ProbeMonitor(model, probe) as mon:  # doctest: +SKIP
    ...     texts = generate(model, prompts)
    >>> mon.prompt_scores["probe"], mon.max_scores("probe")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack

import torch
from torch import Tensor

from probes.errors import BadInputError
from probes.models import LoadedModel
from probes.probe import Probe
from probes.record import hooks

Callback = Callable[[str, Tensor, bool], None]
_EOI = re.compile(r"^eoi\[-(\d+)\]$")


def _offset(position: str) -> int:
    """How many tokens from the end the probe reads at prompt time (0: ``mean``)."""
    if position == "mean":
        return 0
    if position == "last":
        return 1
    if m := _EOI.match(position):
        return int(m.group(1))
    raise BadInputError(
        f"ProbeMonitor supports probes at 'last', 'eoi[-k]' or 'mean', not {position!r}"
    )


class ProbeMonitor:
    """Attach probes to a model and collect per-example scores during forwards.

    Args:
        model: the :class:`~probes.models.LoadedModel` the probes were trained on.
        probes: one probe, a list, or a ``{name: probe}`` mapping. Besides linear
            :class:`~probes.probe.Probe` objects, any object with ``site``, ``layer``,
            ``position``, ``check_model(model)`` and ``score_hidden(h[batch, d]) -> [batch]``
            works (e.g. a cosine-similarity condition).
        callback: ``callback(name, scores[batch], is_prompt)`` called after each
            scored forward (a defense uses it to update its gate while decoding).

    Attributes:
        prompt_scores: ``{name: [batch]}`` scores from the last prompt forward.
        token_scores: ``{name: [[batch], ...]}`` one tensor per generated token.
    """

    def __init__(
        self,
        model: LoadedModel,
        probes: Probe | Sequence[Probe] | Mapping[str, Probe],
        *,
        callback: Callback | None = None,
    ) -> None:
        if isinstance(probes, Probe) or hasattr(probes, "score_hidden"):
            probes = {"probe": probes}
        elif not isinstance(probes, Mapping):
            probes = {f"probe{i}": p for i, p in enumerate(probes)}
        if not probes:
            raise BadInputError("ProbeMonitor needs at least one probe")
        for name, p in probes.items():
            if not isinstance(p, Probe) and not hasattr(p, "score_hidden"):
                raise BadInputError(f"{name!r} is not a Probe (got {type(p).__name__})")
            p.check_model(model)
            model.hook_name(p.site, p.layer)  # validates site and layer
            _offset(p.position)
        self.model = model
        self.probes = dict(probes)
        self.callback = callback
        self._stack: ExitStack | None = None
        self.reset()

    def reset(self) -> None:
        self.prompt_scores: dict[str, Tensor] = {}
        self.token_scores: dict[str, list[Tensor]] = {n: [] for n in self.probes}
        self._weights: Tensor | None = None

    def set_content_weights(self, weights: Tensor | None) -> None:
        """Weights ``[batch, seq]`` over the next prompt forward's content tokens.

        Needed by ``mean``-position probes (see :func:`probes.prompts.content_weights`);
        the weights apply to prompt forwards of that exact shape.
        """
        self._weights = None if weights is None else weights.float()

    def set_prompts(self, prompts: Sequence[str], system: str | None = None) -> None:
        """Content weights for a next prompt forward over exactly ``prompts``, as one
        left-padded batch in this order (e.g. ``generate(model, [prompt])``); needed
        only by ``mean``-position probes. A batch that a caller buckets itself needs
        :meth:`set_content_weights` with that batch's weights instead.
        """
        from probes.prompts import content_weights, encode, make_batch

        enc = encode(self.model.tokenizer, list(prompts), system)
        batch = make_batch(enc, range(len(enc)), self.model.tokenizer.pad_token_id)
        self.set_content_weights(content_weights(enc, batch))

    def _make_hook(self, name: str, probe: Probe):
        k = _offset(probe.position)
        if hasattr(probe, "score_hidden"):
            score = probe.score_hidden
        else:
            coef, bias = probe.coef.to(torch.float32), float(probe.intercept)

            def score(h: Tensor) -> Tensor:
                return h.float() @ coef.to(h.device) + bias

        def fn(module, args, x: Tensor) -> None:  # x: [batch, seq, d]
            is_prompt = x.shape[1] > 1
            if is_prompt and k == 0:
                w = self._weights
                if w is None or tuple(w.shape) != tuple(x.shape[:2]):
                    raise BadInputError(
                        f"probe {name!r} reads the mean over content tokens: call "
                        "set_content_weights(probes.prompts.content_weights(...)) for this batch "
                        f"(got {None if w is None else tuple(w.shape)}, batch is {tuple(x.shape[:2])})"
                    )
                h = torch.einsum("bs,bsd->bd", w.to(x.device, x.dtype), x)
            else:
                h = x[:, -k] if is_prompt else x[:, -1]
            s = score(h).detach().float().cpu()
            if is_prompt:
                self.prompt_scores[name] = s
                self.token_scores[name] = []
            else:
                self.token_scores[name].append(s)
            if self.callback is not None:
                self.callback(name, s, is_prompt)

        return fn

    def __enter__(self) -> ProbeMonitor:
        if self._stack is not None:
            raise BadInputError("this ProbeMonitor is already attached")
        self.reset()
        fns: dict[str, list] = {}
        for name, p in self.probes.items():
            fns.setdefault(self.model.hook_name(p.site, p.layer), []).append(
                self._make_hook(name, p)
            )
        stack = ExitStack()
        try:
            for hook_name, group in fns.items():
                stack.enter_context(hooks(self.model, {hook_name: _chain(group)}))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def scores(self, name: str = "probe") -> Tensor:
        """``[batch, 1 + n_generated]``: the prompt score then one per generated token."""
        if name not in self.prompt_scores:
            raise BadInputError(f"no scores for {name!r} yet; run a forward inside the monitor")
        return torch.stack([self.prompt_scores[name], *self.token_scores[name]], dim=1)

    def max_scores(self, name: str = "probe") -> Tensor:
        """``[batch]`` the maximum over the prompt and every generated token."""
        return self.scores(name).max(dim=1).values

    def iter_names(self) -> Iterator[str]:
        return iter(self.probes)


def _chain(fns: list) -> Callable:
    def fn(module, args, x):
        for f in fns:
            f(module, args, x)

    return fn
