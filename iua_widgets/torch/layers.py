"""Resolve the ``layers`` argument of :func:`iua_widgets.torch.responses` to named modules."""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Iterable

from torch import nn

logger = logging.getLogger(__name__)

#: One entry of ``layers``: a module name from ``model.named_modules()`` or a module type.
LayerSpec = str | type[nn.Module]

#: Activations that output exactly zero, with zero gradient, on a half-line of
#: inputs, so a unit inactive on every input is dead in the dying-ReLU sense.
EXACT_ZERO_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardsigmoid)

#: Other activation modules. For them an output within atol of zero does not mean a
#: dead unit, because their outputs are rarely exactly zero or their gradient there
#: is not zero. ``ReLU6`` subclasses ``Hardtanh``, so :data:`EXACT_ZERO_ACTIVATIONS`
#: is checked first.
OTHER_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.CELU, nn.ELU, nn.GELU, nn.GLU, nn.Hardshrink, nn.Hardswish,
    nn.Hardtanh, nn.LeakyReLU, nn.LogSigmoid, nn.LogSoftmax, nn.Mish, nn.PReLU, nn.RReLU,
    nn.SELU, nn.Sigmoid, nn.SiLU, nn.Softmax, nn.Softmax2d, nn.Softmin, nn.Softplus,
    nn.Softshrink, nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold,
)


def select_layers(
    model: nn.Module, layers: LayerSpec | Iterable[LayerSpec] | None
) -> dict[str, nn.Module]:
    """Return the selected modules of ``model`` by name.

    ``layers`` contains module names (as in ``model.named_modules()``) and module
    types; a type selects every submodule of that type, in model order, but
    never the model itself. ``None`` selects every ``torch.nn.ReLU``. A module
    selected twice under the same name is kept once.

    Raises
    ------
    ValueError
        For an unknown name (listing close matches), a type with no instance in
        the model, two different names of one shared module, or an empty selection.
    TypeError
        For an entry that is neither a string nor a ``torch.nn.Module`` subclass.
    """
    if layers is None:
        layers = [nn.ReLU]
    elif isinstance(layers, str | type):
        layers = [layers]
    # remove_duplicate=False also lists every alias of a shared module.
    by_name = dict(model.named_modules(remove_duplicate=False))
    selected: dict[str, nn.Module] = {}
    name_of: dict[int, str] = {}
    for spec in layers:
        for name, module in _matches(model, by_name, spec):
            first_name = name_of.get(id(module))
            if first_name is None:
                name_of[id(module)] = name
                selected[name] = module
            elif first_name != name and isinstance(spec, str):
                raise ValueError(
                    f"Layers {first_name!r} and {name!r} are the same module, so their "
                    "responses would be identical. Select it under one name only."
                )
    if not selected:
        raise ValueError("layers is empty; pass at least one module name or module type.")
    logger.debug("Selected layers %s", list(selected))
    return selected


def _matches(
    model: nn.Module, by_name: dict[str, nn.Module], spec: object
) -> list[tuple[str, nn.Module]]:
    if isinstance(spec, str):
        if spec not in by_name:
            raise ValueError(_unknown_name_message(spec, list(by_name)))
        return [(spec, by_name[spec])]
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        named = [(name, module) for name, module in model.named_modules() if name]
        found = [(name, module) for name, module in named if isinstance(module, spec)]
        if not found:
            types = sorted({type(module).__name__ for _, module in named})
            raise ValueError(
                f"The model has no submodule of type {spec.__name__}, so layers={spec.__name__} "
                f"selects nothing. Its submodule types are: {', '.join(types) or 'none'}."
            )
        return found
    raise TypeError(
        f"Each entry of layers must be a module name (str) or a torch.nn.Module subclass, "
        f"got {spec!r} ({type(spec).__name__})."
    )


def _unknown_name_message(name: str, known: list[str]) -> str:
    known = [candidate for candidate in known if candidate]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if close:
        hint = f"Close matches: {', '.join(map(repr, close))}."
    else:
        listed_names = ", ".join(map(repr, known[:20]))
        more = f" and {len(known) - 20} more" if len(known) > 20 else ""
        hint = f"Known names: {listed_names}{more}."
    return (
        f"Unknown layer {name!r}: the model has no submodule of that name. {hint} "
        "Names are those of model.named_modules()."
    )


def warn_non_relu(selected: dict[str, nn.Module], *, stacklevel: int = 3) -> None:
    """Warn once if any selected module is an activation without an exact zero region."""
    flagged = {
        name: type(module).__name__
        for name, module in selected.items()
        if isinstance(module, OTHER_ACTIVATIONS)
        and not isinstance(module, EXACT_ZERO_ACTIVATIONS)
    }
    if not flagged:
        return
    listed = ", ".join(f"{name!r} ({kind})" for name, kind in flagged.items())
    warnings.warn(
        f"Selected layers {listed} are not ReLU activations. Their outputs are rarely "
        "exactly zero, so for them 'inactive' only means 'within atol of zero', and a unit "
        "inactive on every input is near zero rather than dead. Read their results "
        "against the atol you chose.",
        UserWarning,
        stacklevel=stacklevel,
    )
