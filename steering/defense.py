"""Probe-gated refusal defenses.

A :class:`~probes.monitor.ProbeMonitor` scores every example of a batch on
its own; the gate is a per-example boolean that the interventions read at
each forward, so harmful and benign requests in one batch are treated
independently. The gate is decided at the prompt (during the prompt forward when every
intervention sits after the probe's layer, as by default, else in an early-stopped
pre-pass, so every layer of the prompt forward already sees it) and re-checked
on every generated token: a completion that turns harmful mid-generation
trips the gate from the next token on. Generated tokens are scored against
their own threshold (``recheck_threshold``), because a probe calibrated at a
prompt position is not calibrated on decoded tokens: :meth:`calibrate_recheck`
sets it from benign generations at a target FPR. Steps after an example's
end-of-sequence token (batch padding) never fire the gate.

Modes:
    ``steer``: add the refusal direction to gated examples.
    ``calibrate``: two-sided: add it where the probe fires, ablate it where the
        probe is confidently below threshold (``score < threshold - margin``),
        which removes over-refusal of benign requests with alarming words.
    ``block``: replace a gated example's answer with a fixed refusal (for
        models that never refuse). Given a refusal direction it is two-sided like
        ``calibrate``: the direction is ablated where the probe is confidently
        below threshold, so a model that over-refuses benign requests stops.

Example:
    >>> defense = GatedRefusal(model, probe, direction, mode="calibrate")  # doctest: +SKIP
    >>> outs = defense.generate(["How do I bake bread?", "Help me poison my boss"])  # doctest: +SKIP
    >>> defense.report()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probes.errors import BadInputError
from probes.generation import greedy
from probes.models import LoadedModel
from probes.monitor import ProbeMonitor
from probes.probe import Probe
from probes.prompts import content_weights
from probes.record import forward_until, hooks, parse_layers
from steering.directions import Direction
from steering.interventions import ablate, add

MODES = ("steer", "calibrate", "block")
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass
class CosineCondition:
    """A CAST-style condition: cosine similarity of the hidden state with a condition vector.

    Conditional Activation Steering (Lee et al., 2025) gates on the similarity of
    the hidden state with a condition direction. Used here as the baseline gate.
    """

    vector: Tensor  # [d_model]
    layer: int
    threshold: float
    model_identity: dict
    site: str = "resid_post"
    position: str = "last"

    def score_hidden(self, h: Tensor) -> Tensor:
        """``[batch, d]`` -> ``[batch]`` cosine similarity with the condition vector."""
        v = self.vector.to(h.device, torch.float32)
        return torch.nn.functional.cosine_similarity(h.float(), v[None, :], dim=-1)

    def check_model(self, model: LoadedModel) -> None:
        if self.model_identity.get("digest") != model.digest:
            raise BadInputError("the condition vector was made for another model")


@dataclass
class GateRecord:
    """What the gate saw for one example."""

    prompt: str
    prompt_score: float
    max_score: float
    fired: bool
    fired_at: int | None  # 0 = at the prompt, k = after the k-th generated token
    ablated: bool
    fired_by: list[str] = field(default_factory=list)  # the probes that fired at the prompt


class GatedRefusal:
    """Per-example, probe-gated refusal steering (a context manager and a generator).

    Args:
        model: the model to defend.
        probe: a harmful-intent :class:`~probes.probe.Probe` for this model, or several
            probes (a list, or a ``{name: probe}`` mapping; the first is the primary):
            the gate fires where any probe scores above its own threshold (an OR, e.g.
            harmful intent or a jailbreak attempt, see :mod:`probes.jailbreak_attempt`),
            and an example counts as confidently benign only where every probe is below
            its threshold minus ``margin``. ``threshold`` and the generated-token
            re-check apply to the primary probe; the others gate at the prompt.
        direction: the refusal :class:`~steering.directions.Direction` (optional for
            ``block``, which then also ablates it on confidently benign examples).
        mode: ``steer``, ``calibrate`` or ``block``.
        threshold: overrides the probe's calibrated threshold.
        coeff: addition coefficient.
        margin: ``calibrate`` (and ``block`` with a direction) ablates where
            ``score < threshold - margin``.
        recheck: re-check the gate on each generated token.
        recheck_threshold: the threshold for generated tokens (default: ``threshold``;
            see :meth:`calibrate_recheck`).
        ablate_directions: what two-sided modes ablate on confidently benign examples
            (their span; default: ``[direction]``). E.g. the refusal direction plus the
            directions :func:`steering.benign_ablation.select_benign_ablation` adds, for a
            model that refuses benign requests along more than one direction. Given
            without ``direction``, ``block`` is two-sided with them.
        ablate_from: where two-sided modes ablate. ``"all"``: every layer, which needs
            the gate before the prompt forward starts (an early-stopped pre-pass to the
            probe's layer). ``"probe"``: the layers after the probe's, so the gate the
            monitor sets in the prompt forward itself is in time: no second pass.
            ``"auto"`` (default): ``"probe"`` when the probe reads an earlier layer than
            the direction's, else ``"all"``. On qwen2.5-coder-0.5b (direction at layer
            17) ablating from layer 15 on removed as much benign over-refusal as
            ablating everywhere (40 harmless: 5.0% vs 5.0%; 40 borderline: 2.5% vs
            2.5%; baseline 12.5% and 15%), and the pre-pass cost ~20% of generation.
    """

    def __init__(
        self,
        model: LoadedModel,
        probe: Probe,
        direction: Direction | None = None,
        *,
        mode: str = "steer",
        threshold: float | None = None,
        coeff: float = 1.0,
        margin: float = 0.0,
        recheck: bool = True,
        recheck_threshold: float | None = None,
        refusal_text: str = REFUSAL_TEXT,
        ablate_from: str = "auto",
        ablate_directions: Sequence[Direction] | None = None,
    ) -> None:
        if mode not in MODES:
            raise BadInputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.probes = _named_probes(probe)
        probe = next(iter(self.probes.values()))
        for name, p in self.probes.items():
            p.check_model(model)
            if p.model_identity.get("digest") != probe.model_identity.get("digest"):
                raise BadInputError(f"probe {name!r} comes from another model than the first")
            if name != next(iter(self.probes)) and not _finite(p.threshold):
                raise BadInputError(f"probe {name!r} has no finite threshold (uncalibrated)")
        if direction is None and mode != "block":
            raise BadInputError(f"mode {mode!r} needs a refusal direction")
        if direction is not None:
            direction.check_model(model)
            if direction.model_identity.get("digest") != probe.model_identity.get("digest"):
                raise BadInputError("the probe and the direction come from different models")
        self.ablate_directions = (
            list(ablate_directions) if ablate_directions is not None
            else [direction] if direction is not None else []
        )  # fmt: skip
        if ablate_directions is not None and not self.ablate_directions:
            raise BadInputError("ablate_directions is empty; pass None for the default")
        for d in self.ablate_directions:
            if not isinstance(d, Direction):
                raise BadInputError(
                    f"ablate_directions must hold Directions, got {type(d).__name__}"
                )
            d.check_model(model)
            if d.model_identity.get("digest") != probe.model_identity.get("digest"):
                raise BadInputError("the probe and an ablated direction come from different models")
        if ablate_directions is not None:
            from steering.interventions import orthonormal_basis

            orthonormal_basis(model, self.ablate_directions)  # refuses dependent directions
        t = probe.threshold if threshold is None else threshold
        if not _finite(t):
            raise BadInputError("no finite threshold: the probe is uncalibrated; pass threshold=")
        if threshold is not None:
            _check_in_range(probe, float(threshold))
        self.model, self.probe, self.direction = model, probe, direction
        self.mode, self.threshold, self.coeff = mode, float(t), float(coeff)
        self.margin, self.recheck, self.refusal_text = float(margin), recheck, refusal_text
        rt = self.threshold if recheck_threshold is None else float(recheck_threshold)
        if rt != rt:
            raise BadInputError("recheck_threshold is NaN")
        self.recheck_threshold = rt
        if ablate_from not in ("auto", "all", "probe"):
            raise BadInputError(
                f"ablate_from must be 'auto', 'all' or 'probe', got {ablate_from!r}"
            )
        self._primary = next(iter(self.probes))
        self._thresholds = {n: float(p.threshold) for n, p in self.probes.items()}
        self._thresholds[self._primary] = self.threshold
        # the gate is complete once the deepest probe has scored
        self._gate_probe = max(self.probes.values(), key=lambda p: p.layer)
        gate_layer = self._gate_probe.layer
        first_dir = min((d.layer for d in self.ablate_directions), default=None)
        late = ablate_from == "probe" or (
            ablate_from == "auto" and first_dir is not None and gate_layer < first_dir
        )
        first = gate_layer + 1 if late else 0
        if first >= model.n_layers and self._two_sided:
            raise BadInputError(
                f"the probe reads the last layer ({gate_layer}); nothing after it to ablate"
            )
        self.ablate_layers = list(range(first, model.n_layers))
        self.recheck_calibration: list[float] = []  # benign token maxima, see calibrate_recheck
        self._gate: Tensor | None = None  # [batch] bool: steer toward refusal
        self._benign: Tensor | None = None  # [batch] bool: ablate refusal (calibrate)
        self._fired_at: list[int | None] = []
        self._fired_by: list[list[str]] = []
        self._pending: dict[str, Tensor] = {}  # this prompt forward's scores so far
        self._step = 0
        self._prefilled = False
        self._monitor: ProbeMonitor | None = None
        self._stack: contextlib.ExitStack | None = None
        self.records: list[GateRecord] = []

    @property
    def _two_sided(self) -> bool:
        """Ablate the direction where the probe is confidently below threshold."""
        return self.mode == "calibrate" or (self.mode == "block" and bool(self.ablate_directions))

    # -- gate -------------------------------------------------------------
    def _on_score(self, name: str, s: Tensor, is_prompt: bool) -> None:
        if is_prompt:
            self._step = 0
            self._pending[name] = s
            if len(self._pending) < len(self.probes):
                return  # the gate is decided once every probe has scored this forward
            scores, self._pending = self._pending, {}
            if not self._prefilled or self._gate is None or self._gate.shape[0] != s.shape[0]:
                fired = {n: v > self._thresholds[n] for n, v in scores.items()}
                self._gate = torch.stack(list(fired.values())).any(0)
                self._benign = torch.stack(
                    [v < self._thresholds[n] - self.margin for n, v in scores.items()]
                ).all(0)
                self._fired_at = [0 if f else None for f in self._gate.tolist()]
                self._fired_by = [[n for n in fired if fired[n][i]] for i in range(s.shape[0])]
            self._prefilled = False
            return
        if name != self._primary:
            return  # only the primary probe re-checks generated tokens
        self._step += 1
        if not self.recheck or self._gate is None:
            return
        new = (s > self.recheck_threshold) & ~self._gate
        for i in torch.nonzero(new).flatten().tolist():
            self._fired_at[i] = self._step
        self._gate = self._gate | new
        self._benign = self._benign & ~self._gate

    def _steer_mask(self) -> Tensor | bool:
        return False if self._gate is None else self._gate

    def _ablate_mask(self) -> Tensor | bool:
        return False if self._benign is None else self._benign

    def _on_forward_start(self, module, args, x: Tensor) -> None:
        """A new prompt forward that was not prefilled: forget the previous batch's gate."""
        if x.shape[1] > 1 and not self._prefilled:
            self._gate = self._benign = None
            self._pending = {}

    def __enter__(self) -> GatedRefusal:
        if self._stack is not None:
            raise BadInputError("this defense is already active")
        stack = contextlib.ExitStack()
        try:
            first = self.model.hook_name("resid_pre", 0)
            stack.enter_context(hooks(self.model, {first: self._on_forward_start}))
            self._monitor = stack.enter_context(
                ProbeMonitor(self.model, self.probes, callback=self._on_score)
            )
            if self.mode in ("steer", "calibrate"):
                stack.enter_context(add(self.model, self.direction, coeff=self.coeff,
                                        mask=self._steer_mask))  # fmt: skip
            if self._two_sided:
                stack.enter_context(ablate(self.model, self.ablate_directions,
                                           mask=self._ablate_mask,
                                           layers=self.ablate_layers))  # fmt: skip
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        self._gate = self._benign = None
        self._pending = {}
        self._prefilled = False
        if stack is not None:
            stack.close()

    # -- generation -------------------------------------------------------
    def generate(
        self, prompts: Sequence[str], *, max_new_tokens: int = 64, max_batch: int = 16
    ) -> list[str]:
        """Defended greedy completions, in input order; fills :attr:`records`."""
        prompts = list(prompts)
        model = self.model
        self.records = [None] * len(prompts)  # type: ignore[list-item]
        layer = parse_layers([self._gate_probe.layer], model.n_layers)[0]
        blocked: set[int] = set()

        def before(enc, batch) -> None:
            self._monitor.set_content_weights(content_weights(enc, batch))
            if self._needs_prefill(layer):
                ids = batch.input_ids.to(model.device)
                self._prefill(ids, batch.attention_mask.to(model.device), layer)

        def after(batch, new: Tensor) -> None:
            mon_scores = self._monitor.scores(self._primary)
            n_valid = _valid_steps(new, model.tokenizer)
            for i, r in enumerate(batch.rows):
                fired_at = self._fired_at[i]
                if fired_at is not None and fired_at > n_valid[i]:
                    fired_at = None  # fired on batch padding after this example ended
                if self.mode == "block" and fired_at is not None:
                    blocked.add(r)
                self.records[r] = GateRecord(
                    prompts[r], float(mon_scores[i, 0]),
                    float(mon_scores[i, : 1 + n_valid[i]].max()),
                    fired_at is not None, fired_at, bool(self._benign[i]) and self._two_sided,
                    list(self._fired_by[i]),
                )  # fmt: skip
            self._gate = self._benign = None

        with self:
            outs = greedy(model.hf_model, model.tokenizer, prompts, max_new_tokens=max_new_tokens,
                          max_batch=max_batch, before_batch=before, after_batch=after)  # fmt: skip
        return [self.refusal_text if i in blocked else o for i, o in enumerate(outs)]

    def calibrate_recheck(
        self,
        benign: Sequence[str],
        *,
        fpr: float = 0.01,
        max_new_tokens: int = 32,
        max_batch: int = 16,
    ) -> float:
        """Set :attr:`recheck_threshold` from generations on benign prompts.

        Each benign prompt is generated greedily as this defense treats a benign
        prompt: with only the probe attached, and in two-sided modes with the
        ablation on (the benign path; the answers it gives are what the re-check will
        read: on qwen2.5-coder-0.5b a threshold calibrated on unablated answers fired
        on the ablated answer to a benign harmless test prompt). Its
        score is the maximum over its generated tokens (the re-check's statistic),
        and the threshold is the ``1 - fpr`` quantile of those maxima (kept in
        :attr:`recheck_calibration`), so the re-check fires on about ``fpr`` of
        benign generations of this length. Returns the threshold.
        """
        from probes.metrics import calibrate_threshold

        benign = list(benign)
        if not benign:
            raise BadInputError("calibrate_recheck needs at least one benign prompt")
        model = self.model
        maxima = [float("-inf")] * len(benign)
        benign_path = contextlib.nullcontext()
        if self._two_sided:
            benign_path = ablate(model, self.ablate_directions, layers=self.ablate_layers)
        with ProbeMonitor(model, self.probe) as mon, benign_path:

            def after(batch, new: Tensor) -> None:
                tokens = mon.scores("probe")[:, 1:]  # [batch, steps]
                n_valid = _valid_steps(new, model.tokenizer)
                for i, r in enumerate(batch.rows):
                    k = min(n_valid[i], tokens.shape[1])
                    maxima[r] = float(tokens[i, :k].max()) if k else float("-inf")

            greedy(model.hf_model, model.tokenizer, benign, max_new_tokens=max_new_tokens,
                   max_batch=max_batch, after_batch=after,
                   before_batch=lambda enc, b: mon.set_content_weights(content_weights(enc, b)))  # fmt: skip
        finite = [m for m in maxima if m != float("-inf")]
        if not finite:
            raise BadInputError("no benign prompt generated a token; raise max_new_tokens")
        self.recheck_calibration = maxima  # input order; -inf: nothing generated
        self.recheck_threshold = float(calibrate_threshold(finite, fpr))
        return self.recheck_threshold

    def _needs_prefill(self, probe_layer: int) -> bool:
        """Whether the gate must be known before the prompt forward reaches the probe.

        Interventions on layers after the probe's (an addition, ablation from the
        probe's layer on) and block's text replacement read the gate the monitor sets
        during generation's own prompt forward: no second pass (a test checks the
        equivalence). Ablation on earlier layers needs an early-stopped pre-pass.
        """
        if self._two_sided and self.ablate_layers[0] <= probe_layer:
            return True
        return self.mode in ("steer", "calibrate") and self.direction.layer <= probe_layer

    def _prefill(self, ids: Tensor, mask: Tensor, layer: int) -> None:
        """Score the prompts with a forward stopped after the probe's layer; set the gate."""
        self._gate = self._benign = None
        self._prefilled = False
        site = self._gate_probe.site
        forward_until(self.model, ids, mask, self.model.hook_name(site, layer))
        self._prefilled = True

    def report(self) -> list[dict]:
        """One dict per example of the last :meth:`generate`: scores, fired, when."""
        return [vars(r).copy() for r in self.records if r is not None]


def _named_probes(probe) -> dict[str, Probe | CosineCondition]:
    """``{name: probe}``, the primary first: ``probe`` for one, ``probe1``... for the rest."""
    ok = (Probe, CosineCondition)
    if isinstance(probe, ok):
        return {"probe": probe}
    if isinstance(probe, Mapping):
        named = dict(probe)
    elif isinstance(probe, Sequence) and not isinstance(probe, str):
        named = {("probe" if i == 0 else f"probe{i}"): p for i, p in enumerate(probe)}
    else:
        raise BadInputError(f"probe must be a Probe, got {type(probe).__name__}")
    if not named:
        raise BadInputError("no probe given")
    for name, p in named.items():
        if not isinstance(p, ok):
            raise BadInputError(f"probe {name!r} must be a Probe, got {type(p).__name__}")
    return named


def _finite(t) -> bool:
    return t is not None and bool(torch.isfinite(torch.tensor(float(t))))


def _check_in_range(probe, t: float) -> None:
    """Refuse a threshold outside the probe's score range: such a gate never or always fires.

    The range is ``[-1, 1]`` for a cosine condition, and the training scores' mean
    +- 10 standard deviations for a probe that recorded them.
    """
    if isinstance(probe, CosineCondition):
        lo, hi, what = -1.0, 1.0, "cosine similarity"
    else:
        m = getattr(probe, "metrics", None) or {}
        if "train_score_mean" not in m or "train_score_std" not in m:
            return
        mean, sd = float(m["train_score_mean"]), float(m["train_score_std"])
        lo, hi, what = mean - 10 * sd, mean + 10 * sd, "training scores' mean +- 10 sd"
    if not lo <= t <= hi:
        raise BadInputError(
            f"threshold {t:g} is outside the probe's score range [{lo:.3g}, {hi:.3g}] ({what}); "
            "the gate would never or always fire"
        )


def _valid_steps(new_tokens: Tensor, tok) -> list[int]:
    """Per row of ``new_tokens [batch, steps]``: decode steps that fed a real token.

    Decode step ``k`` (1-based) feeds generated token ``k - 1``; the steps that
    feed an end-of-sequence token or the padding after it are not valid.
    """
    stop = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    out = []
    for row in new_tokens.tolist():
        n = next((j for j, t in enumerate(row) if t in stop), len(row))
        out.append(min(n, len(row) - 1))  # the last generated token is never fed
    return out
