"""Interventions on the residual stream as context managers.

Each intervention registers torch forward hooks on the bridge's HookPoints
and removes them on exit, including when the body raises; the model's
weights are never touched. Interventions compose by nesting. ``mask`` selects
the examples of a batch that are steered (a bool tensor ``[batch]`` or a
callable returning one, ``None`` for all examples or ``False`` for none, read
at every forward, so a defense can change it while generating).

Example:
    >>> with ablate(model, direction):  # doctest: +SKIP
    ...     out = generate(model, prompts)
    >>> with add(model, direction, layer=10, coeff=1.0):  # doctest: +SKIP
    ...     out = generate(model, prompts)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from probes.errors import BadInputError
from probes.models import LoadedModel, check_layer
from probes.record import hooks
from steering.directions import Direction

MaskLike = Tensor | Callable[[], Tensor | bool | None] | None


def unit_vector(model: LoadedModel, direction: Direction | Tensor) -> Tensor:
    """Validate a direction for ``model`` and return it as a float32 unit vector ``[d_model]``."""
    vec = direction.vector if isinstance(direction, Direction) else direction
    if isinstance(direction, Direction):
        direction.check_model(model)
    vec = torch.as_tensor(vec, dtype=torch.float32).flatten()
    if vec.numel() != model.d_model:
        raise BadInputError(
            f"direction has width {vec.numel()} but the model's d_model is {model.d_model}"
        )
    if not torch.isfinite(vec).all():
        raise BadInputError("direction contains NaN or inf")
    norm = vec.norm()
    if norm == 0:
        raise BadInputError("direction is the zero vector")
    return vec / norm


def _mask_for(mask: MaskLike, x: Tensor) -> Tensor | None:
    """Per-example weights ``[batch, 1, 1]`` in x's dtype, or None for all examples."""
    m = mask() if callable(mask) else mask
    if m is None:
        return None
    if m is False:
        return torch.zeros((x.shape[0], 1, 1), dtype=x.dtype, device=x.device)
    m = torch.as_tensor(m, device=x.device)
    if m.ndim != 1 or m.shape[0] != x.shape[0]:
        raise BadInputError(
            f"mask has shape {tuple(m.shape)}, expected [{x.shape[0]}] (one per example)"
        )
    return m.to(x.dtype)[:, None, None]


def orthonormal_basis(model: LoadedModel, directions: Sequence[Direction | Tensor]) -> Tensor:
    """Validate directions for ``model``; an orthonormal basis of their span, ``[k, d_model]``.

    Gram-Schmidt (a QR decomposition in float64) in the given order, so the first row is
    the first direction's unit vector. Directions that are (nearly) linearly dependent
    are refused: their span is smaller than the list suggests.
    """
    units = [unit_vector(model, d) for d in directions]
    if not units:
        raise BadInputError("no direction given")
    q, r = torch.linalg.qr(torch.stack(units).T.double())
    diag = r.diagonal().abs()
    if (diag < 1e-4).any():
        i = int(torch.nonzero(diag < 1e-4)[0])
        raise BadInputError(
            f"direction {i} lies (almost) in the span of the directions before it; "
            "drop it or pass linearly independent directions"
        )
    return (q * torch.sign(r.diagonal())).T.float()  # signs fixed: row 0 = units[0]


@contextlib.contextmanager
def ablate(
    model: LoadedModel,
    direction: Direction | Tensor | Sequence[Direction | Tensor],
    *,
    mask: MaskLike = None,
    layers: Sequence[int] | None = None,
    sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
) -> Iterator[None]:
    """Project ``direction`` out of the residual stream at every layer and position.

    ``x <- x - (x . r) r`` on ``resid_pre`` and on the attention and MLP outputs
    of each block (so no block can write the direction back). A list of directions
    ablates their whole span: ``x <- x - (x B^T) B`` with ``B [k, d_model]`` an
    orthonormal basis of it (see :func:`orthonormal_basis`).
    """
    dirs = [direction] if isinstance(direction, (Direction, Tensor)) else list(direction)
    if len(dirs) == 1:  # the plain projection, bit-identical to earlier releases
        basis = unit_vector(model, dirs[0])[None, :]
    else:
        basis = orthonormal_basis(model, dirs)
    basis = basis.to(model.device)  # [k, d_model]
    layers = range(model.n_layers) if layers is None else layers
    for layer in layers:
        check_layer(model, layer)

    def fn(module, args, x: Tensor) -> Tensor:
        b = basis.to(x.dtype)
        if b.shape[0] == 1:
            rr = b[0]
            proj = (x @ rr)[..., None] * rr
        else:
            proj = (x @ b.T) @ b
        w = _mask_for(mask, x)
        return x - proj if w is None else x - w * proj

    with hooks(model, {model.hook_name(s, layer): fn for layer in layers for s in sites}):
        yield


@contextlib.contextmanager
def add(
    model: LoadedModel,
    direction: Direction | Tensor,
    *,
    layer: int | None = None,
    coeff: float = 1.0,
    mask: MaskLike = None,
    positions: str = "all",
) -> Iterator[None]:
    """Add ``coeff * direction`` to ``resid_pre`` of ``layer`` (default: the direction's layer).

    The vector is added as given (not normalised): a difference-in-means
    direction carries its natural scale, so ``coeff=1.0`` moves a harmless
    activation to the harmful mean.
    """
    if isinstance(direction, Direction):
        direction.check_model(model)
        vec, layer = direction.vector, direction.layer if layer is None else layer
    else:
        vec = direction
    if layer is None:
        raise BadInputError("add() needs a layer (the direction carries none)")
    check_layer(model, layer)
    vec = torch.as_tensor(vec, dtype=torch.float32).flatten()
    if vec.numel() != model.d_model:
        raise BadInputError(f"direction has width {vec.numel()} but d_model is {model.d_model}")
    if not torch.isfinite(vec).all() or not torch.isfinite(torch.tensor(coeff)):
        raise BadInputError("direction or coeff contains NaN or inf")
    if positions not in ("all", "last"):
        raise BadInputError(f"positions must be 'all' or 'last', got {positions!r}")
    v = (coeff * vec).to(model.device)

    def fn(module, args, x: Tensor) -> Tensor:
        delta = v.to(x.dtype)
        w = _mask_for(mask, x)
        delta = delta if w is None else w * delta
        if positions == "all":
            return x + delta
        out = x.clone()
        out[:, -1:] = out[:, -1:] + delta
        return out

    with hooks(model, {model.hook_name("resid_pre", layer): fn}):
        yield
