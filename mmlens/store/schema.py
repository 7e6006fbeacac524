"""The trace-store schema in one place: dimension, coordinate and variable names, validation, provenance."""

from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------------------------------------
# Names (docs/store_schema.md is the prose version of this block; keep them in step)
# ----------------------------------------------------------------------------------------------

SCHEMA_VERSION = 1

#: Dimensions of trace stores, fixed across the package.
DIMS: tuple[str, ...] = (
    "dataset",
    "seed",
    "variant",
    "image",
    "class",
    "layer",
    "head",
    "query",
    "key_role",
    "patch_row",
    "patch_col",
    "channel",
    "failure",
)
#: Dimensions that statistics add to their results (never stored by a trace).
RESULT_DIMS: tuple[str, ...] = ("measure", "estimate", "layer_kind")
#: Dimensions a stored variable may carry on top of its documented ones.
OPTIONAL_DIMS: tuple[str, ...] = ("dataset", "seed", "query")

GROUPS: tuple[str, ...] = ("vision", "text", "logits", "attribution")

VISION_ROLES: tuple[str, ...] = ("cls", "patch", "prompt")
TEXT_ROLES: tuple[str, ...] = ("sot", "prompt", "word", "eot", "pad")
TOKEN_ROLES: tuple[str, ...] = ("cls", "patch", "prompt", "sot", "word", "eot", "pad")
PROMPT_ROLE = "prompt"
#: The query whose attention the readout variables describe, per tower.
READOUT_ROLE: dict[str, str] = {"vision": "cls", "text": "eot"}

PROMPTED_VARIANT = "full"
REFERENCE_VARIANT = "zeroshot"
ABLATION_VARIANTS: tuple[str, ...] = ("bias_only", "redistribution_only", "constant_bias", "drop_prompts")
VARIANTS: tuple[str, ...] = (PROMPTED_VARIANT, REFERENCE_VARIANT, *ABLATION_VARIANTS)

LAYER_KINDS: tuple[str, ...] = ("injected", "carried", "none")
SPLITS: tuple[str, ...] = ("base", "novel")

#: Coordinates required on a dimension when it is present (``{dim: coords}``).
IMAGE_COORDS: tuple[str, ...] = ("label", "classname", "split", "path")
CLASS_COORDS: tuple[str, ...] = ("classname", "split")
LAYER_COORDS: tuple[str, ...] = ("layer_kind",)
QUERY_COORDS: tuple[str, ...] = ("token_role",)
FAILURE_COORDS: tuple[str, ...] = ("failure_path",)

#: Provenance attributes every store root carries (docs/store_schema.md, "root attrs").
PROVENANCE_KEYS: tuple[str, ...] = (
    "mmlens_schema",
    "model_name",
    "pretrained",
    "weights_sha256",
    "method",
    "method_hparams",
    "prompt_sha256",
    "dataset",
    "manifest_version",
    "seed",
    "mmlens_version",
    "torch_version",
    "open_clip_version",
    "device",
    "dtype",
    "created",
)
#: Provenance keys that must agree before a store may be resumed (a different value means a
#: different experiment, whose numbers must not be mixed into this store).
IDENTITY_KEYS: tuple[str, ...] = (
    "model_name",
    "pretrained",
    "weights_sha256",
    "method",
    "method_hparams",
    "prompt_sha256",
    "dataset",
    "manifest_version",
    "seed",
    "dtype",
)
#: Root attribute holding the streaming writer's bookkeeping (JSON string); hidden by ``mmlens.open``.
PROGRESS_ATTR = "_progress"

_V = ("variant", "image", "layer", "head")
_VL = ("variant", "image", "layer")
_GRID = ("patch_row", "patch_col")

#: Vision-group variables: name -> (documented dims, meaning). The readout query is ``[cls]``.
VISION_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt_mass": (_V, "alpha at [cls]: raw attention mass on the prompt keys"),
    "prompt_mass_other_queries": (_V, "mean alpha over the other original queries"),
    "original_norm": (_V, "|(1-alpha)(sum_j a^_j v_j) W_O^h|: path (a) per head"),
    "bias_head_norm": (_V, "|alpha (sum_m a~_m v_m) W_O^h|: beta per head"),
    "original_total_norm": (_VL, "|sum_h (a)_h|"),
    "bias_norm": (_VL, "|beta| = |sum_h beta_h|"),
    "output_bias_norm": (("layer",), "|b_O|"),
    "residual_norm": (_VL, "|x| at the readout query, block input"),
    "attention_by_role": ((*_V, "key_role"), "raw attention a at the readout query summed per key role"),
    "cls_attention": ((*_V, *_GRID), "a^ from [cls] to each patch, renormalised over the originals"),
    "prompt_key_cosine": ((*_V, *_GRID), "cosine of each patch key with the mean prompt key"),
    "prompt_value_cosine": ((*_V, *_GRID), "cosine of each patch value with the mean prompt value"),
    "foreground": (("image", *_GRID), "fraction of foreground pixels per patch"),
    "bias": ((*_VL, "channel"), "beta vectors at the readout query"),
    "original": ((*_VL, "channel"), "sum_h (a)_h at the readout query"),
    "failures": (("failure",), "error message of each input that could not be read"),
}
_GRID_ONLY = ("cls_attention", "prompt_key_cosine", "prompt_value_cosine", "foreground")
#: Text-group variables: as vision with ``class`` in place of ``image``, no patch-grid ones.
TEXT_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    name: (tuple("class" if d == "image" else d for d in dims), meaning.replace("[cls]", "EOT"))
    for name, (dims, meaning) in VISION_VARIABLES.items()
    if name not in _GRID_ONLY and name != "failures"
}
LOGITS_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "logits": (("variant", "image", "class"), "CLIP logits, logit scale applied"),
}
VARIABLES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "vision": VISION_VARIABLES,
    "text": TEXT_VARIABLES,
    "logits": LOGITS_VARIABLES,
}


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------


def provenance_attrs(**fields: Any) -> dict[str, str | int | float]:
    """Root attributes for a store: the caller's fields plus schema/library versions and the date.

    ``store`` cannot import torch, so ``torch_version`` and ``open_clip_version`` (and everything
    about the model, prompts and data) come from the caller. Values are made storable in zarr
    and netCDF: dicts/lists become JSON strings (``method_hparams``), booleans become 0/1,
    ``None`` becomes ``"none"``, paths become strings. Missing documented keys are filled with
    ``"unknown"`` so that the store validates; pass them to make it informative.

    Parameters
    ----------
    **fields
        Provenance values, usually the keys of :data:`PROVENANCE_KEYS` (extra keys are kept).

    Returns
    -------
    dict
        JSON-serialisable scalars, with ``mmlens_schema``, ``mmlens_version``,
        ``xarray_version``, ``numpy_version`` and ``created`` (ISO 8601, UTC) filled in unless given.

    Examples
    --------
    >>> attrs = provenance_attrs(model_name="ViT-B-16", method_hparams={"n_ctx": 2}, torch_version="2.4")
    >>> attrs["method_hparams"], attrs["mmlens_schema"], attrs["dataset"]
    ('{"n_ctx": 2}', 1, 'unknown')
    """
    import datetime

    import numpy as np
    import xarray as xr

    from mmlens._version import __version__

    out: dict[str, Any] = {key: "unknown" for key in PROVENANCE_KEYS}
    out.update(
        mmlens_schema=SCHEMA_VERSION,
        mmlens_version=__version__,
        xarray_version=xr.__version__,
        numpy_version=np.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    for key, value in fields.items():
        out[key] = _storable_attr(key, value)
    return out


def _storable_attr(key: str, value: Any) -> str | int | float:
    import json
    import os

    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "none"
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    raise TypeError(
        f"provenance attr {key!r}: expected a string, number, dict or list, found {type(value).__name__}; "
        "convert it to a string before passing it"
    )
