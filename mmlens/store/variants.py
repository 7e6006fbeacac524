"""Variant labels: a route applied to some branches and layers (``route[:branch[:layers]]``). No torch.

The words come from :mod:`mmlens.store.schema` (``ROUTES``, ``VARIANT_BRANCHES``, ``LAYER_GROUPS``);
this module only reads and writes labels, so stores, evaluation results and tables agree on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmlens.store import schema

__all__ = ["Variant", "ablation_variants", "parse_variant"]


@dataclass(frozen=True)
class Variant:
    """A route ablation: ``route`` applied to ``branch`` (both/vision/text) and ``layers`` (all/injected/carried)."""

    route: str
    branch: str = "both"
    layers: str = "all"

    @property
    def label(self) -> str:
        """``route``, ``route:branch`` or ``route:branch:layers`` (defaults left out)."""
        if self.layers != "all":
            return f"{self.route}:{self.branch}:{self.layers}"
        return self.route if self.branch == "both" else f"{self.route}:{self.branch}"


def parse_variant(spec: str | Variant | tuple) -> Variant:
    """Read a variant: ``"bias_only"``, ``"bias_only:vision"``, ``"drop_prompts:both:carried"`` or a tuple.

    Examples
    --------
    >>> parse_variant("bias_only:vision").label, parse_variant(("constant_bias", "both", "injected")).label
    ('bias_only:vision', 'constant_bias:both:injected')
    """
    if isinstance(spec, Variant):
        v = spec
    else:
        parts = tuple(spec) if isinstance(spec, tuple) else tuple(str(spec).split(":"))
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"variant {spec!r}: expected 'route[:branch[:layers]]'.")
        v = Variant(*parts)
    if v.route not in schema.ROUTES:
        raise ValueError(f"variant {spec!r}: unknown route {v.route!r}; known: {', '.join(schema.ROUTES)}.")
    if v.branch not in schema.VARIANT_BRANCHES:
        raise ValueError(f"variant {spec!r}: branch must be one of {schema.VARIANT_BRANCHES}, got {v.branch!r}.")
    if v.layers not in schema.LAYER_GROUPS:
        raise ValueError(f"variant {spec!r}: layers must be one of {schema.LAYER_GROUPS}, got {v.layers!r}.")
    if v.route == schema.PROMPTED_VARIANT and (v.branch, v.layers) != ("both", "all"):
        raise ValueError(f"variant {spec!r}: 'full' is the unmodified model; it takes no branch or layers.")
    return v


def ablation_variants(
    routes: Sequence[str] = schema.ABLATION_ROUTES,
    branches: Sequence[str] = schema.VARIANT_BRANCHES,
    layer_groups: Sequence[str] = schema.LAYER_GROUPS,
    *,
    reference: bool = True,
) -> list[str]:
    """Variant labels of a route-ablation grid (``full`` and ``zeroshot`` first when ``reference``).

    Examples
    --------
    >>> ablation_variants(["bias_only"], ["both", "vision"], ["all"])
    ['full', 'zeroshot', 'bias_only', 'bias_only:vision']
    """
    out = [schema.PROMPTED_VARIANT, schema.REFERENCE_VARIANT] if reference else []
    for route in routes:
        for branch in branches:
            for layers in layer_groups:
                label = parse_variant((route, branch, layers)).label
                if label not in out:
                    out.append(label)
    return out
