"""The trace-store schema in one place: dimension, coordinate and variable names, validation, provenance."""

from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------------------------------------
# Names (docs/store_schema.md is the prose version of this block; keep them in step)
# ----------------------------------------------------------------------------------------------

# Version 2 (issues I, VII, II, VI together): compute dtype and activation, resume identity, integrity record,
# bias_source. Bumped once for all four; older stores open for reading with a note of what they lack.
SCHEMA_VERSION = 3

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
    # attribution group (mmlens.attribution.to_dataset)
    "baseline",
    "branch",
    "prompt_token",
    # direct group (direct logit effects, docs/math.md)
    "component",
    "target",
)
#: Dimensions that statistics add to their results (never stored by a trace); ``attribution``
#: stacks attribution methods in :func:`mmlens.attribution.agreement`'s results.
RESULT_DIMS: tuple[str, ...] = ("measure", "estimate", "layer_kind", "attribution")
#: Dimensions a stored variable may carry on top of its documented ones.
OPTIONAL_DIMS: tuple[str, ...] = ("dataset", "seed", "query")

GROUPS: tuple[str, ...] = ("vision", "text", "logits", "attribution", "direct")

VISION_ROLES: tuple[str, ...] = ("cls", "patch", "prompt")
TEXT_ROLES: tuple[str, ...] = ("sot", "prompt", "word", "classname", "eot", "pad")
TOKEN_ROLES: tuple[str, ...] = ("cls", "patch", "prompt", "sot", "word", "classname", "eot", "pad")
PROMPT_ROLE = "prompt"
#: The query whose attention the readout variables describe, per tower.
READOUT_ROLE: dict[str, str] = {"vision": "cls", "text": "eot"}

#: The towers (the ``branch`` of a variant or of prompt integrated gradients).
BRANCHES: tuple[str, ...] = ("vision", "text")

PROMPTED_VARIANT = "full"
REFERENCE_VARIANT = "zeroshot"
#: Route ablations (docs/math.md, "Route ablations"): how a block rebuilds its output from the split.
ABLATION_ROUTES: tuple[str, ...] = ("bias_only", "redistribution_only", "constant_bias", "drop_prompts")
#: Every route; a variant is a route applied to some branches and layers (``route[:branch[:layers]]``,
#: :mod:`mmlens.store.variants`).
ROUTES: tuple[str, ...] = (PROMPTED_VARIANT, REFERENCE_VARIANT, *ABLATION_ROUTES)
#: The plain variants (a route on both branches and every layer): what a trace stores, in this order.
VARIANTS: tuple[str, ...] = ROUTES

LAYER_KINDS: tuple[str, ...] = ("injected", "carried", "none")
#: The ``branch`` part of a variant label: both towers or one (:data:`BRANCHES`).
VARIANT_BRANCHES: tuple[str, ...] = ("both", *BRANCHES)
#: The ``layers`` part of a variant label: every block, or the blocks of one prompted layer kind.
LAYER_GROUPS: tuple[str, ...] = ("all", *(k for k in LAYER_KINDS if k != "none"))
#: What the block's bias term in ``bias``/``bias_norm`` is (scalar coordinate ``bias_source`` of the
#: vision and text groups): a prompt method's β (``prompt``) or bias tuning's learned b^ℓ (``learned``).
BIAS_SOURCES: tuple[str, ...] = ("prompt", "learned")
#: Methods whose bias term is learned directly (mmlens.models.METHODS; bias_coupled: vision b = W·t + c).
LEARNED_BIAS_METHODS: tuple[str, ...] = ("bias", "bias_coupled")
#: "all": the whole class set, for data without a base/novel protocol.
SPLITS: tuple[str, ...] = ("base", "novel", "all")

#: String coordinate value of padded entries in studies (datasets with fewer images or classes).
STUDY_PADDING = ""

#: Coordinates required on a dimension when it is present (``{dim: coords}``).
IMAGE_COORDS: tuple[str, ...] = ("label", "classname", "split", "path")
CLASS_COORDS: tuple[str, ...] = ("classname", "split")
LAYER_COORDS: tuple[str, ...] = ("layer_kind",)
QUERY_COORDS: tuple[str, ...] = ("token_role",)
FAILURE_COORDS: tuple[str, ...] = ("failure_path",)

#: Provenance attributes every store root carries (docs/store_schema.md, "root attrs").
_PROVENANCE_KEYS_V1: tuple[str, ...] = (
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
#: Keys added by schema 2: what decides which items a run traces, and in what order.
SELECTION_KEYS: tuple[str, ...] = ("split", "subset", "limit", "order", "file_list_sha256")
#: Keys added by schema 2: how the model computed (its MLP activation; the dtype its blocks ran in).
COMPUTE_KEYS: tuple[str, ...] = ("activation", "compute_dtype")
PROVENANCE_KEYS: tuple[str, ...] = (*_PROVENANCE_KEYS_V1, *COMPUTE_KEYS, *SELECTION_KEYS)
#: Schema versions ``mmlens.open`` still reads (writing or resuming needs :data:`SCHEMA_VERSION`).
READABLE_SCHEMAS: tuple[int, ...] = (1, 2, SCHEMA_VERSION)
#: What a store of an older schema lacks, for the message ``mmlens.open`` gives when reading one.
LACKS_BEFORE: dict[int, str] = {
    2: "the integrity record (chunks are not checked on open or read; `mmlens store verify` can only try to "
       "decode them), the resume identity keys " + ", ".join(SELECTION_KEYS)
       + " (a resume could not tell another selection of images apart), the model's " + " and ".join(COMPUTE_KEYS)
       + " (whether it ran OpenAI's QuickGELU and in which precision), and the `bias_source` coordinate (bias "
       "tuning's learned bias was not traced)",
    # issues IV and V add to schema 3: each names here what a schema-2 store lacks
    3: "the `direct` group (direct logit effects, issue IV), the byte-sized layout (zarr format 3 shards of "
       "`_progress.images_per_shard` images: one file per 32-image chunk instead, so statistics cost more per byte "
       "and a cluster cannot write it by regions; issue V) and the region bookkeeping of a distributed trace "
       "(`mmlens trace --workers/--scheduler` can neither resume nor rewrite it; issue V)",
}


def lacks(version: Any) -> list[str]:
    """What a store written with schema ``version`` lacks compared with the current schema.

    Examples
    --------
    >>> lacks(SCHEMA_VERSION)
    []
    >>> lacks(1)[0].startswith("the integrity record")
    True
    """
    if not isinstance(version, int):
        return []
    return [text for since, text in sorted(LACKS_BEFORE.items()) if version < since <= SCHEMA_VERSION]


#: Provenance keys that must agree before a store may be resumed (a different value means a
#: different experiment, whose numbers must not be mixed into this store).
IDENTITY_KEYS: tuple[str, ...] = (
    "model_name",
    "pretrained",
    "weights_sha256",
    "activation",
    "method",
    "method_hparams",
    "prompt_sha256",
    "dataset",
    "manifest_version",
    "seed",
    "dtype",
    "compute_dtype",
    *SELECTION_KEYS,
)
#: Provenance keys of a store traced on a dask.distributed cluster (schema 3, issue V): how many workers, on
#: which devices. Not identity keys: a store resumes on another cluster, and equals a one-process store otherwise.
CLUSTER_KEYS: tuple[str, ...] = ("cluster_workers", "cluster_devices")
#: Root attribute holding the streaming writer's bookkeeping (JSON string); hidden by ``mmlens.open``.
PROGRESS_ATTR = "_progress"
#: Root attribute holding the integrity record: ``{array: {chunk key: [bytes, crc32]}}`` (JSON string), written
#: with every commit; hidden by ``mmlens.open`` (docs/store_schema.md, "Integrity").
CHUNKS_ATTR = "_chunks"
#: Root attributes that are writer bookkeeping, not provenance.
BOOKKEEPING_ATTRS: tuple[str, ...] = (PROGRESS_ATTR, CHUNKS_ATTR)

_V = ("variant", "image", "layer", "head")
_VL = ("variant", "image", "layer")
_GRID = ("patch_row", "patch_col")

#: Vision-group variables: name -> (documented dims, meaning). The readout query is ``[cls]``.
VISION_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt_mass": (_V, "alpha at [cls]: raw attention mass on the prompt keys"),
    "prompt_mass_other_queries": (_V, "mean alpha over the other original queries"),
    "prompt_mass_all_queries": ((*_V, "query"), "alpha at every query token (on request)"),
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

#: Attribution methods as the ``attribution`` group names them (``mmlens.attribution``): name ->
#: (documented dims, meaning). Only ``full`` and ``zeroshot`` variants are attributed.
ATTRIBUTION_METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "ig_pixels": (("variant", "image", *_GRID), "integrated gradients on the pixels, summed per patch"),
    "ig_patch_embedding": (("variant", "image", *_GRID), "integrated gradients on the patch embeddings"),
    "occlusion": (("variant", "image", *_GRID), "target logit drop when the patch is occluded"),
    "attention_gradcam": (("variant", "image", "layer", *_GRID), "GradCAM on the [cls] -> patch attention"),
    "gradient_rollout": (("variant", "image", *_GRID), "gradient-weighted attention rollout (Chefer et al.)"),
    "prompt_ig": (("variant", "image", "branch", "layer", "prompt_token"),
                  "integrated gradients on each learned prompt vector (NaN where none)"),
}
#: Per-image values of one attribution run, stored as ``<method>_<suffix>`` with dims (variant, image).
ATTRIBUTION_PER_IMAGE: dict[str, str] = {
    "convergence_delta": "captum's convergence delta (integrated gradients)",
    "logit": "the explained (target) logit",
    "baseline_logit": "the target logit at the baseline",
    "prompt_relevance": "rollout relevance of [cls] on the prompt tokens, summed",
}
#: Dims a variable may carry on top of its documented ones, per (group, variable).
VARIABLE_OPTIONAL_DIMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("attribution", "attention_gradcam"): ("head",),  # per_head=True
    ("attribution", "prompt_ig"): ("baseline",),  # several baselines
    **{("attribution", f"prompt_ig_{suffix}"): ("baseline",) for suffix in ATTRIBUTION_PER_IMAGE},
}
ATTRIBUTION_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    **ATTRIBUTION_METHODS,
    **{f"{method}_{suffix}": (("variant", "image"), f"{meaning} ({method})")
       for method in ATTRIBUTION_METHODS for suffix, meaning in ATTRIBUTION_PER_IMAGE.items()},
}

#: What a direct component is (coordinate ``kind`` along ``component`` of the ``direct`` group; docs/math.md,
#: "Direct logit effects"): the residual stream entering block 0 at the readout, per block the original
#: path (a) and β (per head; bias tuning's learned b^ℓ: one per block), b_O and the MLP, and the final
#: LayerNorm's bias term.
DIRECT_KINDS: tuple[str, ...] = ("embedding", "original", "bias", "output_bias", "mlp", "ln_bias")
#: The logits a direct effect is taken on (coordinate ``target``): the label class's logit, and the margin
#: = that logit minus the mean of the other classes' logits.
DIRECT_TARGETS: tuple[str, ...] = ("label", "margin")
#: Coordinates along ``component`` (non-index): tower, kind, block (-1: none) and head (-1: not per head).
COMPONENT_COORDS: tuple[str, ...] = ("tower", "kind", "layer", "head")


def direct_layout(heads_per_layer: list[int] | tuple[int, ...], *, learned_bias: bool = False
                  ) -> list[tuple[str, int, int]]:
    """The direct components of one tower in stored order, ``(kind, layer, head)`` with -1 where not per layer/head.

    ``embedding``; for every block the heads' ``original`` paths, the ``bias`` per head (one per block,
    head -1, when the bias is bias tuning's learned b^ℓ), ``output_bias`` and ``mlp``; then ``ln_bias``.
    The trace (``mmlens.tracing.direct``) and the synthetic stores both build the ``component`` axis from it.

    Examples
    --------
    >>> [kind for kind, _, _ in direct_layout([2])]
    ['embedding', 'original', 'original', 'bias', 'bias', 'output_bias', 'mlp', 'ln_bias']
    >>> [c for c in direct_layout([2], learned_bias=True) if c[0] == "bias"]
    [('bias', 0, -1)]
    """
    out = [("embedding", -1, -1)]
    for layer, heads in enumerate(heads_per_layer):
        out += [("original", layer, h) for h in range(heads)]
        out += [("bias", layer, -1)] if learned_bias else [("bias", layer, h) for h in range(heads)]
        out += [("output_bias", layer, -1), ("mlp", layer, -1)]
    out.append(("ln_bias", -1, -1))
    return out


def direct_component_coords(layouts: dict[str, list[tuple[str, int, int]]]) -> dict[str, Any]:
    """The ``component`` index and its coordinates (:data:`COMPONENT_COORDS`) from each tower's :func:`direct_layout`.

    Towers in :data:`BRANCHES` order (vision first), one flat index over both.

    Examples
    --------
    >>> coords = direct_component_coords({"vision": direct_layout([1]), "text": direct_layout([1])})
    >>> coords["component"][-1], coords["tower"][1][-1], coords["kind"][1][:3]
    (11, 'text', ['embedding', 'original', 'bias'])
    """
    rows = [(tower, *c) for tower in BRANCHES for c in layouts[tower]]
    return {
        "component": list(range(len(rows))),
        **{name: ("component", [r[i] for r in rows]) for i, name in enumerate(COMPONENT_COORDS)},
    }


DIRECT_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "direct_effect": (("variant", "image", "component", "target"),
                      "direct effect of each component on the label logit / margin (NaN without a label)"),
    "direct_effect_all_classes": (("variant", "image", "component", "class"),
                                  "direct effect of each component on every class logit (on request: 'all')"),
    "direct_total": (("variant", "image", "target"),
                     "the label logit / margin each tower's components sum to (the logits group's numbers)"),
}

VARIABLES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "vision": VISION_VARIABLES,
    "text": TEXT_VARIABLES,
    "logits": LOGITS_VARIABLES,
    "attribution": ATTRIBUTION_VARIABLES,
    "direct": DIRECT_VARIABLES,
}


def bias_source(method: str) -> str:
    """The ``bias_source`` of a trace of ``method``: ``learned`` for bias tuning, else ``prompt``.

    Examples
    --------
    >>> bias_source("maple"), bias_source("bias_coupled")
    ('prompt', 'learned')
    """
    return "learned" if method in LEARNED_BIAS_METHODS else "prompt"


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
    ('{"n_ctx": 2}', 3, 'unknown')
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
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


class SchemaError(ValueError):
    """A tree or Dataset does not follow docs/store_schema.md; the message lists every problem."""


def infer_group(ds: Any) -> str:
    """Which store group a Dataset looks like: ``direct`` (direct effects), ``logits``, ``text`` (``class``
    without ``image``), ``attribution`` (attribution maps and no trace variables) or ``vision``.

    An explicit ``mmlens_group`` attribute wins over the guess.

    Examples
    --------
    >>> import xarray as xr
    >>> infer_group(xr.Dataset({"prompt_mass": (("variant", "class"), [[0.1]])}))
    'text'
    """
    explicit = getattr(ds, "attrs", {}).get("mmlens_group")
    if explicit in VARIABLES:
        return explicit
    dims = set(ds.dims)
    names = set(getattr(ds, "data_vars", {}))
    if names & set(DIRECT_VARIABLES):
        return "direct"
    if "logits" in names:
        return "logits"
    if names & set(ATTRIBUTION_VARIABLES) and not names & set(VISION_VARIABLES):
        return "attribution"
    if "class" in dims and "image" not in dims:
        return "text"
    return "vision"


def validate(obj: Any, *, group: str | None = None, require_provenance: bool = True) -> Any:
    """Check a trace tree or one of its group Datasets against the schema; return it unchanged.

    Structural checks only (names, dims, coordinates, attrs); no array data is loaded, so a
    lazily opened store validates instantly. Every problem is reported at once, each with what
    was expected and what was found.

    Parameters
    ----------
    obj
        An ``xarray.DataTree`` (root of a store) or an ``xarray.Dataset`` (one group).
    group
        For a Dataset: which group it is (``vision``, ``text``, ``logits``, ``attribution``, ``direct``); guessed
        when omitted.
    require_provenance
        Check the provenance attrs (on the tree root, or on the Dataset itself). Turn off for
        batches handed to a writer that adds provenance itself.

    Returns
    -------
    The object, unchanged, so that ``validate(open(path))`` can be chained.

    Raises
    ------
    SchemaError
        Listing every mismatch.

    Examples
    --------
    >>> from mmlens.store.synthetic import example_tree
    >>> tree = validate(example_tree())
    >>> import xarray as xr
    >>> validate(xr.Dataset({"prompt_mass": (("variant", "image", "layers"), [[[0.1]]])}),
    ...          require_provenance=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmlens.store.schema.SchemaError: ...
    """
    import xarray as xr

    problems: list[str] = []
    if isinstance(obj, xr.DataTree):
        if require_provenance:
            problems += _check_provenance(dict(obj.attrs), where="root attrs")
        unknown = [name for name in obj.children if name not in GROUPS]
        if unknown:
            problems.append(
                f"groups: expected names among {list(GROUPS)}, found {unknown}; "
                "rename them or keep extra data in a separate store"
            )
        if not any(name in obj.children for name in ("vision", "text", "logits")):
            problems.append(
                f"groups: expected at least one of vision/text/logits, found {list(obj.children) or 'none'}"
            )
        if obj.has_data:
            problems.append(
                f"root: expected only attrs at the root, found variables {sorted(obj.to_dataset().data_vars)}; "
                "put arrays in a group"
            )
        for name, node in obj.children.items():
            if name in VARIABLES:
                problems += _check_dataset(node.to_dataset(), name)
    elif isinstance(obj, xr.Dataset):
        g = group or infer_group(obj)
        if g not in VARIABLES:
            raise ValueError(f"group must be one of {list(VARIABLES)}, found {g!r}")
        if require_provenance:
            problems += _check_provenance(dict(obj.attrs), where="attrs")
        problems += _check_dataset(obj, g)
    else:
        raise TypeError(f"validate expects an xarray DataTree or Dataset, found {type(obj).__name__}")
    if problems:
        raise SchemaError(
            "does not match the mmlens store schema (docs/store_schema.md):\n  - " + "\n  - ".join(problems)
        )
    return obj


def _check_provenance(attrs: dict[str, Any], where: str) -> list[str]:
    problems = []
    version = attrs.get("mmlens_schema")
    # an older readable store is checked against the keys of its own version (mmlens.open says what it lacks)
    expected = _PROVENANCE_KEYS_V1 if version == 1 else PROVENANCE_KEYS
    missing = [key for key in expected if key not in attrs]
    if missing:
        problems.append(
            f"{where}: expected all provenance keys, found these missing: {missing}; "
            "build attrs with mmlens.store.schema.provenance_attrs(...)"
        )
    if version is not None and version not in READABLE_SCHEMAS:
        hint = "upgrade mmlens" if isinstance(version, int) and version > SCHEMA_VERSION else "re-trace"
        problems.append(f"{where}: expected mmlens_schema among {list(READABLE_SCHEMAS)}, found {version!r}; {hint}")
    for key, value in attrs.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            import numpy as np

            if isinstance(value, np.generic) and not isinstance(value, np.bool_):
                continue
            problems.append(
                f"{where}[{key!r}]: expected a string or number (storable in zarr and netCDF), "
                f"found {type(value).__name__}; provenance_attrs() converts it"
            )
    return problems


def _check_dataset(ds: Any, group: str) -> list[str]:
    problems: list[str] = []
    table = VARIABLES[group]
    allowed = set(DIMS)
    unknown_dims = [d for d in ds.dims if d not in allowed]
    if unknown_dims:
        problems.append(f"{group}: expected dims among {list(DIMS)}, found unknown {unknown_dims}")
    for name, var in ds.data_vars.items():
        if name not in table:
            continue  # extra variables are allowed (new outputs, attribution maps)
        required = table[name][0]
        optional = (*VARIABLE_OPTIONAL_DIMS.get((group, name), ()), *OPTIONAL_DIMS)
        missing, extra = set(required) - set(var.dims), set(var.dims) - set(required)
        if missing or not extra <= set(optional):
            problems.append(
                f"{group}/{name}: expected dims ({', '.join(required)}) plus optionally "
                f"{'/'.join(optional)}, found ({', '.join(map(str, var.dims))})"
            )
        if name != "failures" and var.dtype.kind != "f":
            problems.append(f"{group}/{name}: expected a floating-point array, found dtype {var.dtype}")
    if group == "attribution":
        problems += _check_attribution(ds)
    coords_needed = {
        "image": {"vision": IMAGE_COORDS, "direct": IMAGE_COORDS, "attribution": ()}.get(group, ("label",)),
        # direct: `classname` is the per-image coordinate there; the class names are the logits group's
        "class": CLASS_COORDS if group == "text" else () if group == "direct" else ("classname",),
        # attribution: the layer axis is shared by both branches (prompt IG), whose layer kinds can differ
        "layer": () if group == "attribution" else LAYER_COORDS,
        "query": QUERY_COORDS,
        "failure": FAILURE_COORDS,
        "baseline": (),
        "branch": (),
        "prompt_token": (),
        "component": COMPONENT_COORDS,
        "target": (),
    }
    for dim, names in coords_needed.items():
        if dim not in ds.dims:
            continue
        if dim not in ds.coords and dim != "failure":
            problems.append(f"{group}: expected an index coordinate for dim {dim!r}, found none")
        for coord in names:
            if coord not in ds.coords:
                problems.append(f"{group}: expected coordinate {coord!r} on dim {dim!r}, found none")
            elif dim not in ds.coords[coord].dims:
                problems.append(
                    f"{group}: expected coordinate {coord!r} along {dim!r}, found dims {ds.coords[coord].dims}"
                )
    problems += _check_values(ds, group, "layer_kind", LAYER_KINDS)
    problems += _check_values(ds, group, "bias_source", BIAS_SOURCES)
    problems += _check_values(ds, group, "split", (*SPLITS, STUDY_PADDING))
    problems += _check_values(ds, group, "token_role", TOKEN_ROLES)
    roles = {"vision": VISION_ROLES, "text": TEXT_ROLES}.get(group, TOKEN_ROLES)
    problems += _check_values(ds, group, "key_role", roles)
    if group == "direct":
        problems += _check_values(ds, group, "kind", DIRECT_KINDS)
        problems += _check_values(ds, group, "tower", BRANCHES)
        problems += _check_values(ds, group, "target", DIRECT_TARGETS)
    if "label" in ds.coords and ds.coords["label"].dtype.kind not in "iu":
        problems.append(f"{group}: expected integer 'label' values, found dtype {ds.coords['label'].dtype}")
    return problems


def _check_attribution(ds: Any) -> list[str]:
    """The ``attribution`` group: every variable per image and variant, attributed variants only."""
    problems = []
    for name, var in ds.data_vars.items():
        if name in ATTRIBUTION_VARIABLES:
            continue  # documented dims, checked above
        missing = [d for d in ("variant", "image") if d not in var.dims]
        if missing:
            problems.append(
                f"attribution/{name}: expected dims (variant, image, ...) like every attribution result, "
                f"found ({', '.join(map(str, var.dims))}); build the group with mmlens.attribution.to_dataset"
            )
        if var.dtype.kind != "f":
            problems.append(f"attribution/{name}: expected a floating-point array, found dtype {var.dtype}")
    problems += _check_values(ds, "attribution", "variant", (PROMPTED_VARIANT, REFERENCE_VARIANT))
    problems += _check_values(ds, "attribution", "branch", BRANCHES)
    return problems


def _check_values(ds: Any, group: str, coord: str, allowed: tuple[str, ...]) -> list[str]:
    if coord not in ds.coords:
        return []
    import numpy as np

    values = {str(x) for x in np.asarray(ds.coords[coord].values, dtype=object).ravel()}
    bad = sorted(values - set(allowed))
    if bad:
        return [f"{group}: expected {coord!r} values among {list(allowed)}, found {bad}"]
    return []
