"""``mmlens.trace``: run a PromptedCLIP and record the split of every block into labelled xarray.

The output follows docs/store_schema.md: a DataTree with groups ``vision`` (readout ``[cls]``),
``text`` (readout EOT of each class prompt) and ``logits``; variants (``full``, the zero-shot
reference, route ablations) share one ``variant`` dim so "with vs without prompts" is a subtraction.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from mmlens.models.prompted import ROLE_CODES, BlockCall
from mmlens.store import schema
from mmlens.tracing.decompose import (
    AttentionSplit,
    check_module_output,
    check_query_split,
    completeness_rtol,
    compute_dtype,
    float32_region,
    head_outputs,
)
from mmlens.tracing.direct import (
    DirectRecorder,
    direct_dataset,
    direct_effects_batch,
    direct_rtol,
    parse_direct_effects,
    tower_readout,
)
from mmlens.tracing.interventions import SplitHook, routes_for

__all__ = ["trace", "trace_to_store", "iter_trace_batches"]

_ROLES = {"vision": schema.VISION_ROLES, "text": schema.TEXT_ROLES}
_READOUT = {b: ROLE_CODES[r] for b, r in schema.READOUT_ROLE.items()}
#: Rows (images, class prompts) of the first batch on which the module's own attention is run again
#: to check the recomputed one; the per-head split identity is checked on every row.
CHECK_ROWS = 1


class _Collector:
    """Per forward pass: readout statistics of every block of one tower, as numpy arrays."""

    def __init__(self, branch: str, *, grid: tuple[int, int] | None, all_queries: bool, vectors: bool,
                 check: bool) -> None:
        self.branch, self.grid, self.all_queries, self.vectors = branch, grid, all_queries, vectors
        self.check = check
        self.layers: dict[int, dict[str, np.ndarray]] = {}
        self.query_roles: np.ndarray | None = None
        self.max_completeness_error = 0.0

    def __call__(self, call: BlockCall, split: AttentionSplit, z: torch.Tensor, rebuilt: torch.Tensor) -> None:
        batch, tokens = call.x.shape[:2]
        roles = call.roles if call.roles.dim() == 2 else call.roles.expand(batch, -1)
        readout = (roles == _READOUT[self.branch]).int().argmax(-1)  # the readout token of each row
        at = split.at(readout)
        if self.check:
            # (a)+(b) = a·v per head at the readout of every row (cheap), and the recomputed attention
            # = the module's own output, all tokens, on the first row (the module runs once more there)
            # the split is float32 whatever the model's precision, so its own identity holds to float32's
            # tolerance; the module runs in the model's precision (autocast as where the block ran) and is
            # held to the tolerance of the dtype it computed in (its output's)
            err = check_query_split(split, at, branch=call.branch, layer=call.layer,
                                    rtol=completeness_rtol(torch.float32))
            n = min(batch, CHECK_ROWS)
            with float32_region(z.device.type, split.autocast):
                ref = call.block.attention(z[:n], attn_mask=call.attn_mask)
            err = max(err, check_module_output(rebuilt[:n], ref, branch=call.branch, layer=call.layer))
            self.max_completeness_error = max(self.max_completeness_error, err)
        positions = torch.arange(tokens, device=roles.device).expand(batch, -1)
        out: dict[str, torch.Tensor] = {}

        alpha = split.prompt_mass  # [batch, heads, queries]
        rows = torch.arange(batch, device=roles.device)
        out["prompt_mass"] = alpha[rows, :, readout]  # the same numbers as prompt_mass_all_queries there
        # SOT is left out: under the text tower's causal mask it sees only itself (the prompts follow it),
        # so its α is 0 whatever the prompts learned, and counting it would only dilute the mean
        others = (roles != ROLE_CODES["prompt"]) & (roles != ROLE_CODES["pad"]) & (roles != ROLE_CODES["sot"]) \
            & (positions != readout[:, None])
        out["prompt_mass_other_queries"] = (alpha * others[:, None]).sum(-1) / others.sum(-1).clamp_min(1)[:, None]

        # path (a) and β per head, projected by W_O^h: [batch, heads, 2, width] in one go
        paths = head_outputs(split, torch.stack([at.original_context, at.prompt_context], dim=2))
        head_norms, totals = paths.norm(dim=-1), paths.sum(1)  # [batch, heads, 2], [batch, 2, width]
        total_norms = totals.norm(dim=-1)
        out["original_norm"], out["bias_head_norm"] = head_norms[..., 0], head_norms[..., 1]
        bias = totals[:, 1]
        if call.post_attn_bias is not None:
            # bias tuning: the block's bias term is the learned b^ℓ (no prompt keys, so the prompt part is 0);
            # stored in the same variables as a prompt method's β (bias_source = "learned"). It is not a sum
            # over heads, so it has no per-head part.
            bias = bias + call.post_attn_bias.float().to(bias.device)
            out["bias_head_norm"] = torch.full_like(head_norms[..., 1], float("nan"))
        out["original_total_norm"], out["bias_norm"] = total_norms[:, 0], bias.norm(dim=-1)
        out["residual_norm"] = call.x[rows, readout].float().norm(dim=-1)
        role_masks = torch.stack([roles == ROLE_CODES[r] for r in _ROLES[self.branch]], dim=-1).float()
        out["attention_by_role"] = at.attn @ role_masks  # [batch, heads, keys] @ [batch, keys, roles]
        if self.vectors:
            out["bias"], out["original"] = bias, totals[:, 0]
        if self.branch == "vision":
            patches = roles[0] == ROLE_CODES["patch"]
            prompts = roles[0] == ROLE_CODES["prompt"]
            gh, gw = self.grid
            out["cls_attention"] = at.attn_original[:, :, patches].reshape(batch, -1, gh, gw)
            prompt_index = prompts.nonzero().flatten()
            # keys without b_K: common to every key, it cancels in the softmax (see keys_without_bias)
            for name, t in (("prompt_key_cosine", split.keys_without_bias), ("prompt_value_cosine", split.v)):
                if len(prompt_index):
                    # cosine of every token with the mean prompt (one matmul, no copy of the patch tokens),
                    # then the patches; as F.cosine_similarity for non-zero vectors
                    mean_prompt = t.index_select(2, prompt_index).mean(2)  # [batch, heads, head_dim]
                    dots = (t @ mean_prompt[..., None])[..., 0]
                    norms = t.norm(dim=-1) * mean_prompt.norm(dim=-1)[..., None]
                    cos = (dots / norms.clamp_min(1e-8))[:, :, patches]
                else:  # no prompt tokens in this block
                    cos = torch.full((batch, t.shape[1], int(patches.sum())), float("nan"), device=t.device)
                out[name] = cos.reshape(batch, -1, gh, gw)
        if self.all_queries:
            out["prompt_mass_all_queries"] = alpha
            self.query_roles = roles[0].cpu().numpy()
        self.layers[call.layer] = {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def _layer_dataset(collector: _Collector, model, item_dim: str, layer_kinds: list[str]) -> xr.Dataset:
    """Stack a collector's per-layer arrays into a Dataset with dims (item, layer, ...)."""
    names = collector.layers[0].keys()
    dims = {
        "prompt_mass": ("head",), "prompt_mass_other_queries": ("head",), "original_norm": ("head",),
        "bias_head_norm": ("head",), "original_total_norm": (), "bias_norm": (), "residual_norm": (),
        "attention_by_role": ("head", "key_role"), "bias": ("channel",), "original": ("channel",),
        "cls_attention": ("head", "patch_row", "patch_col"), "prompt_key_cosine": ("head", "patch_row", "patch_col"),
        "prompt_value_cosine": ("head", "patch_row", "patch_col"), "prompt_mass_all_queries": ("head", "query"),
    }
    n_layers = len(layer_kinds)
    data = {}
    for name in names:
        stacked = np.stack([collector.layers[i][name] for i in range(n_layers)], axis=1)
        data[name] = ((item_dim, "layer", *dims[name]), stacked)
    ds = xr.Dataset(data)
    coords: dict[str, Any] = {"layer": np.arange(n_layers),
                              "layer_kind": ("layer", np.array(layer_kinds, dtype=object)),
                              "bias_source": schema.bias_source(model.method)}
    if "head" in ds.dims:
        coords["head"] = np.arange(ds.sizes["head"])
    if "key_role" in ds.dims:
        coords["key_role"] = np.array(_ROLES[collector.branch], dtype=object)
    if "query" in ds.dims:
        names_by_code = {v: k for k, v in ROLE_CODES.items()}
        coords["query"] = np.arange(ds.sizes["query"])
        coords["token_role"] = ("query", np.array([names_by_code[int(c)] for c in collector.query_roles], dtype=object))
    return ds.assign_coords(coords)


def _batches(images_or_loader: Any, batch_size: int) -> Iterator[dict]:
    """Normalise the input: a tensor, a Dataset, or an iterable of batches -> dict batches."""
    if isinstance(images_or_loader, torch.Tensor):
        for lo in range(0, len(images_or_loader), batch_size):
            yield {"image": images_or_loader[lo:lo + batch_size]}
        return
    if isinstance(images_or_loader, torch.utils.data.Dataset) and hasattr(images_or_loader, "__getitem__") \
            and hasattr(images_or_loader, "__len__"):
        from mmlens.data import collate

        images_or_loader = torch.utils.data.DataLoader(images_or_loader, batch_size=batch_size, collate_fn=collate)
    for batch in images_or_loader:
        if isinstance(batch, dict):
            yield batch
        elif isinstance(batch, (list, tuple)):
            yield {"image": batch[0], **({"label": batch[1]} if len(batch) > 1 else {})}
        else:
            yield {"image": batch}


def _image_coords(batch: dict, n: int, start: int, classnames: Sequence[str], split: str) -> dict:
    labels = batch.get("label")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels) if labels is not None \
        else np.full(n, -1)
    names = batch.get("classname")
    if names is None:
        names = [classnames[i] if 0 <= i < len(classnames) else "" for i in labels]
    paths = batch.get("path") or [""] * n
    splits = batch.get("split") or [split] * n
    return {
        "image": np.arange(start, start + n),
        "label": ("image", labels.astype(np.int64)),
        "classname": ("image", np.array(list(names), dtype=object)),
        "split": ("image", np.array(list(splits), dtype=object)),
        "path": ("image", np.array([str(p) for p in paths], dtype=object)),
    }


def _foreground(masks: torch.Tensor | None, grid: tuple[int, int]) -> np.ndarray | None:
    """Fraction of foreground pixels in each patch, from masks [batch, H, W]."""
    if masks is None:
        return None
    m = masks.float()
    if m.dim() == 4:
        m = m[:, 0]
    return F.adaptive_avg_pool2d(m[:, None], grid)[:, 0].cpu().numpy()


def _dtypes(model, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(weights, compute) dtype of the model's blocks on ``device``, under the autocast active now.

    Read off a residual block, not the first parameter: open_clip keeps ``positional_embedding``
    in float32 when the weights are half precision.
    """
    block = model.clip.visual.transformer.resblocks[0]
    return block.attn.in_proj_weight.dtype, compute_dtype(block, device.type)


def _provenance(model, extra: dict | None, device: torch.device) -> dict:
    import open_clip

    from mmlens._version import __version__
    from mmlens.models.checkpoints import prompt_sha256
    from mmlens.models.loading import activation_name

    source = model.clip_source
    pretrained = source.get("pretrained") or {}
    weights, computed = _dtypes(model, device)
    fields = {
        "mmlens_schema": schema.SCHEMA_VERSION,
        "model_name": source.get("name", type(model.clip).__name__),
        "pretrained": pretrained.get("tag") or pretrained.get("path") or pretrained.get("source", "unknown"),
        "weights_sha256": pretrained.get("sha256") or "",
        # read off the built modules, whichever route built them: QuickGELU (OpenAI's) or GELU
        "activation": activation_name(model.clip),
        "method": model.method,
        "method_hparams": json.dumps(model.hparams, sort_keys=True),
        "prompt_sha256": prompt_sha256(model.prompt_state_dict()),
        "dataset": "",
        "manifest_version": "",
        "seed": -1,
        "mmlens_version": __version__,
        "torch_version": str(torch.__version__),  # a TorchVersion (str subclass) that h5netcdf cannot write
        "open_clip_version": getattr(open_clip, "__version__", "unknown"),
        "device": str(device),
        # the weights' dtype; compute_dtype: what the blocks computed in (autocast's, else the weights');
        # the statistics themselves are float32 either way
        "dtype": str(weights).replace("torch.", ""),
        "compute_dtype": str(computed).replace("torch.", ""),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    fields["preprocess"] = _preprocess_record(model)
    if not fields["weights_sha256"] and hasattr(model.clip, "state_dict"):
        from mmlens.models.loading import state_dict_sha256

        # hashing a ViT-B takes seconds: cache it where the loaded model's record lives
        fields["weights_sha256"] = pretrained["sha256"] = state_dict_sha256(model.clip)
        source["pretrained"] = pretrained
    fields.update(extra or {})
    return schema.provenance_attrs(**fields)


def _preprocess_record(model) -> str:
    """The picture geometry of the model's own transform (docs/store_schema.md, ``preprocess``), as JSON.

    The explorer cuts pictures with it so that pixels line up with the patch maps
    (``mmlens.viz.pictures``). open_clip's transforms always crop (or pad) around the centre.
    """
    from mmlens.data.transforms import input_spec

    spec = input_spec(model)
    height, width = spec.size
    size = height if height == width else [height, width]
    return json.dumps({"size": size, "resize_mode": spec.resize_mode, "crop": "center"}, sort_keys=True)


#: Variants an attribution is computed for (prompts on / off); route ablations are not attributed.
ATTRIBUTED_VARIANTS = (schema.PROMPTED_VARIANT, schema.REFERENCE_VARIANT)

def parse_attribution(attribution: Any) -> dict[str, dict[str, Any]]:
    """Normalise an ``attribution=`` argument to ``{method: attribute() keyword arguments}``.

    Accepts ``None``, ``"occlusion,ig_pixels"``, ``["occlusion"]`` or ``{"ig_pixels": {"n_steps": 16}}``;
    names are those of ``mmlens.store.schema.ATTRIBUTION_METHODS``.

    Examples
    --------
    >>> parse_attribution("occlusion, attention_gradcam")
    {'occlusion': {}, 'attention_gradcam': {}}
    """
    if attribution is None:
        return {}
    if isinstance(attribution, str):
        attribution = [a.strip() for a in attribution.split(",") if a.strip()]
    if isinstance(attribution, Mapping):
        chosen = {str(k): dict(v or {}) for k, v in attribution.items()}
    else:
        chosen = {str(k): {} for k in attribution}
    unknown = [k for k in chosen if k not in schema.ATTRIBUTION_METHODS]
    if unknown:
        raise ValueError(f"Unknown attribution method(s) {unknown}; expected names among "
                         f"{', '.join(schema.ATTRIBUTION_METHODS)} (mmlens.attribution).")
    return chosen


def _attribution_objects(model, methods: Mapping[str, dict], variants: Sequence[str]) -> dict[str, tuple]:
    """Build the attribution objects once (fails before any tracing on a misfit, e.g. prompt IG on zero-shot)."""
    if not methods:
        return {}
    from mmlens.attribution import IMAGE_METHODS, PromptIntegratedGradients

    if not any(v in ATTRIBUTED_VARIANTS for v in variants):
        raise ValueError(f"attribution is computed for the variants {list(ATTRIBUTED_VARIANTS)}; this trace runs "
                         f"only {list(variants)}. Add variant 'full' (or with_reference=True).")
    objects = {}
    for name, kwargs in methods.items():
        cls = IMAGE_METHODS.get(name, PromptIntegratedGradients if name == "prompt_ig" else None)
        objects[name] = (cls(model, progress=False), kwargs)
    return objects


def _attribute_batch(model, objects: Mapping[str, tuple], images: torch.Tensor, coords: dict,
                     variants: Sequence[str], target: Any) -> xr.Dataset:
    """The ``attribution`` group of one batch, on the trace's image coordinates."""
    from mmlens.attribution import attribute_variants, to_dataset

    attributed = [v for v in variants if v in ATTRIBUTED_VARIANTS]
    labels = coords["label"][1]
    known = bool(len(labels)) and bool((labels >= 0).all()) and bool((labels < len(model.classnames)).all())
    batch = {"image": images, **({"label": torch.as_tensor(labels)} if known else {})}
    if target is None:
        target = "label" if known else "predicted"
    results = {}
    with torch.enable_grad():
        for name, (method, kwargs) in objects.items():
            if name == "prompt_ig":  # attributes the prompts themselves: only where they are on
                if schema.PROMPTED_VARIANT in attributed:
                    model.prompts_enabled = True
                    results[name] = method.attribute(batch, target, **kwargs)
            else:
                results[name] = attribute_variants(method, batch, target, variants=attributed, **kwargs)
    ds = to_dataset(results, attrs={"attribution_target": str(target) if isinstance(target, str) else "custom"})
    return ds.assign_coords({k: v for k, v in coords.items() if k in ("image", *schema.IMAGE_COORDS)})


def iter_trace_batches(
    model,
    images_or_loader: Any,
    *,
    variants: Sequence[str] = ("full",),
    all_queries: bool = False,
    store_bias_vectors: bool = False,
    mean_bias: dict | None = None,
    intervention: dict | None = None,
    check_completeness: bool = True,
    batch_size: int = 32,
    skip: int = 0,
    start: int = 0,
    image_split: str = "all",
    class_split: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
    attribution: Any = None,
    attribution_target: Any = None,
    direct_effects: bool | str = False,
) -> Iterator[tuple[dict[str, xr.Dataset], int]]:
    """Yield ``({group: Dataset}, n_inputs)`` per batch; the first yield also carries ``text``.

    The streaming core of :func:`trace` and :func:`trace_to_store`. ``skip`` input items are
    read and passed over (resume of an input that cannot seek); ``start`` says that the input
    begins at item ``start`` of the run (resume of one restarted there). Image indices continue
    from the first item traced. With ``attribution`` every batch
    also carries an ``attribution`` group.
    """
    from mmlens._progress import progress_bar

    device = torch.device(device) if device is not None else next(model.parameters()).device
    grid = tuple(model.clip.visual.grid_size)
    kinds = {b: model.layer_kinds(b) for b in ("vision", "text")}
    was_training = model.training
    model.eval()
    previous_hook, previous_enabled = model.block_hook, model.prompts_enabled
    attributors = _attribution_objects(model, parse_attribution(attribution), variants)
    direct = _direct_mode(model, direct_effects)
    # the direct check is a sum per image: it runs on every batch unless the checks are switched off
    direct_tol = (direct_rtol(_dtypes(model, device)[1]) if check_completeness else float("inf")) if direct else None
    text_readouts: dict[str, Any] = {}  # per variant: the text tower's linearised readout (traced once)
    text_features: dict[str, torch.Tensor] = {}
    text_sets = []
    try:
        with torch.no_grad():
            for variant in variants:  # the text tower sees no image: trace it once per variant
                col = _Collector("text", grid=None, all_queries=False, vectors=store_bias_vectors,
                                 check=check_completeness)
                routes = routes_for(model, variant, **(intervention or {}))
                text_direct = DirectRecorder(model, "text", routes, mean_bias) if direct else None
                model.block_hook = SplitHook(routes, mean_bias, _recorders(col, text_direct),
                                             record_branches=("text",))
                model.prompts_enabled = variant != "zeroshot"
                text_features[variant] = model.text_features()
                if text_direct is not None:
                    text_readouts[variant] = tower_readout(model, text_direct)
                ds = _layer_dataset(col, model, "class", kinds["text"])
                text_sets.append(ds.expand_dims(variant=[variant]))
            text = xr.concat(text_sets, dim="variant", coords="minimal", compat="override", join="outer")
            text = text.assign_coords(
                {"class": np.arange(len(model.classnames)),
                 "classname": ("class", np.array(model.classnames, dtype=object)),
                 "split": ("class", np.array(list(class_split or ["all"] * len(model.classnames)), dtype=object))})
            first = True
            consumed = start  # input items seen so far (resume skips the first `skip`)
            skip += start
            bar = progress_bar(total=total, desc="trace", unit="img", enabled=progress, initial=skip)
            carried: list = []  # failures of batches without one readable image: committed with the next images
            for batch in _batches(images_or_loader, batch_size):
                failures = list(batch.get("failures") or [])
                n_in = len(batch["image"]) + len(failures)  # input items, unreadable ones included
                cut = min(max(skip - consumed, 0), n_in)
                start, consumed = consumed + cut, consumed + n_in
                if cut == n_in:
                    continue
                if cut and failures:
                    raise RuntimeError("Cannot resume inside a batch that had unreadable images: "
                                       "resume with the batch_size of the interrupted run.")
                if cut:  # a batch straddling the resume point
                    batch = {k: v[cut:] if isinstance(v, (torch.Tensor, list, tuple, np.ndarray)) else v
                             for k, v in batch.items()}
                _report_skipped(failures)
                bar.update(n_in - cut)
                if len(batch["image"]) == 0:  # every image unreadable: nothing to run the model on
                    carried += failures
                    continue
                failures, carried = carried + failures, []
                images = batch["image"]
                n = len(images)
                images = images.to(device)
                coords = _image_coords(batch, n, start, model.classnames, image_split)
                per_variant, logits, direct_parts = [], [], []
                for variant in variants:
                    col = _Collector("vision", grid=grid, all_queries=all_queries, vectors=store_bias_vectors,
                                     check=check_completeness and first)
                    routes = routes_for(model, variant, **(intervention or {}))
                    vision_direct = DirectRecorder(model, "vision", routes, mean_bias) if direct else None
                    model.block_hook = SplitHook(routes, mean_bias, _recorders(col, vision_direct),
                                                 record_branches=("vision",))
                    model.prompts_enabled = variant != "zeroshot"
                    variant_logits = model(images, text_features[variant]).float()
                    logits.append(variant_logits.cpu().numpy())
                    if vision_direct is not None:
                        # the text components were read once per variant; each batch adds its image features
                        direct_parts.append(direct_effects_batch(
                            tower_readout(model, vision_direct), text_readouts[variant],
                            torch.as_tensor(coords["label"][1]), variant_logits, mode=direct, rtol=direct_tol,
                            variant=variant))
                    ds = _layer_dataset(col, model, "image", kinds["vision"])
                    per_variant.append(ds.expand_dims(variant=[variant]))
                vision = xr.concat(per_variant, dim="variant", coords="minimal", compat="override", join="outer")
                vision = vision.assign_coords(coords)
                vision["output_bias_norm"] = ("layer", np.array(
                    [float(b.attn.out_proj.bias.float().norm()) if b.attn.out_proj.bias is not None else 0.0
                     for b in model.clip.visual.transformer.resblocks]))
                if failures:
                    vision["failures"] = _failures(failures)
                fg = _foreground(batch.get("mask"), grid)
                if fg is not None:
                    vision["foreground"] = (("image", "patch_row", "patch_col"), fg)
                logit_ds = xr.Dataset(
                    {"logits": (("variant", "image", "class"), np.stack(logits))},
                    coords={"variant": np.array(list(variants), dtype=object),
                            "class": np.arange(len(model.classnames)),
                            "classname": ("class", np.array(model.classnames, dtype=object)),
                            **{k: v for k, v in coords.items() if k != "classname"}},
                )
                groups = {"vision": vision, "logits": logit_ds}
                if direct:
                    groups["direct"] = direct_dataset(model, direct_parts, variants, coords)
                if attributors and n:  # outside the trace's hook: the attribution methods run the model themselves
                    model.block_hook, model.prompts_enabled = previous_hook, previous_enabled
                    groups["attribution"] = _attribute_batch(model, attributors, images, coords, variants,
                                                             attribution_target)
                if first:
                    text["output_bias_norm"] = ("layer", np.array(
                        [float(b.attn.out_proj.bias.float().norm()) if b.attn.out_proj.bias is not None else 0.0
                         for b in model.clip.transformer.resblocks]))
                    groups["text"] = text
                first = False
                yield groups, n + len(failures)
            if carried:  # the last batches had no readable image: their failures alone
                yield {"vision": xr.Dataset({"failures": _failures(carried)})}, len(carried)
            bar.close()
    finally:
        model.block_hook, model.prompts_enabled = previous_hook, previous_enabled
        model.train(was_training)


def _recorders(*recorders: Callable | None) -> Callable:
    """One SplitHook recorder calling each of ``recorders`` (None skipped) in turn."""
    chosen = [r for r in recorders if r is not None]
    if len(chosen) == 1:
        return chosen[0]

    def record(*args: Any) -> None:
        for recorder in chosen:
            recorder(*args)

    return record


def _direct_mode(model, direct_effects: Any) -> str | None:
    """The checked ``direct_effects`` mode (None: off); refuses models whose logit is not a scaled cosine."""
    mode = parse_direct_effects(direct_effects)
    if mode and getattr(model.clip, "logit_bias", None) is not None:
        raise ValueError("direct_effects: this CLIP adds a learned logit bias (SigLIP-style), which no component "
                         "carries; direct effects are defined for CLIP's scaled cosine logits only.")
    return mode


def _variants(with_reference: bool, variants: Sequence[str] | None) -> list[str]:
    chosen = list(variants or ["full"])
    if with_reference and "zeroshot" not in chosen:
        chosen.append("zeroshot")
    if chosen and chosen[0] != "full" and "full" in chosen:
        chosen.remove("full")
        chosen.insert(0, "full")
    return chosen


def trace(
    model,
    images_or_loader: Any,
    *,
    with_reference: bool = False,
    variants: Sequence[str] | None = None,
    all_queries: bool = False,
    store_bias_vectors: bool = False,
    mean_bias: dict | None = None,
    intervention: dict | None = None,
    check_completeness: bool = True,
    batch_size: int = 32,
    image_split: str = "all",
    class_split: Sequence[str] | None = None,
    provenance: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    attribution: str | Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    attribution_target: Any = None,
    direct_effects: bool | str = False,
) -> xr.DataTree:
    """Trace a PromptedCLIP on images: the split of docs/math.md for every block and head, both towers.

    Parameters
    ----------
    model : PromptedCLIP
        Any method, including ``zeroshot``.
    images_or_loader : Tensor, Dataset or iterable of batches
        Images ``[N, 3, H, W]``; an mmlens ``ImageDataset``; or batches (dicts with ``image`` and
        optionally ``label``, ``classname``, ``path``, ``mask``, ``split``).
    with_reference : bool
        Also trace the same images without prompts (variant ``zeroshot``), aligned on the same
        coordinates: ``tree["vision"].sel(variant="full") - tree["vision"].sel(variant="zeroshot")``.
    variants : list of str, optional
        Route ablations to trace as well (``bias_only``, ``redistribution_only``, ``drop_prompts``,
        ``constant_bias`` with ``mean_bias``); ``intervention`` = ``{"branch": ..., "layers": ...}``.
    all_queries : bool
        Also store α for every query token (``prompt_mass_all_queries`` with a ``query`` dim).
    store_bias_vectors : bool
        Store β and the original path at the readout (``bias``, ``original``; a ``channel`` dim).
    check_completeness : bool
        On the first batch, in every block of both towers: check per head that (a)+(b) at the
        readout query equals the head's attention output (every image / class prompt), and that
        the recomputed attention (a)+(b)+(c) equals the block's own module output, all tokens
        (the module is run once more on the first image and the first class prompt). Raises
        :class:`~mmlens.tracing.decompose.CompletenessError` naming branch, layer (and head).
    attribution : str, list of str or dict, optional
        Also compute captum attributions of the same images (``mmlens.attribution``) into an
        ``attribution`` group: method names among ``ig_pixels``, ``ig_patch_embedding``,
        ``occlusion``, ``attention_gradcam``, ``gradient_rollout``, ``prompt_ig`` (a comma-separated
        string, a list, or ``{name: attribute() keyword arguments}``). Image methods run for the
        traced variants ``full`` and ``zeroshot`` (route ablations are not attributed); ``prompt_ig``
        for ``full`` only.
    attribution_target : optional
        The logit to explain (see ``mmlens.attribution``); default ``"label"`` when every image
        has a label, else ``"predicted"``.
    direct_effects : bool or {"margin", "all"}
        Also split every logit exactly into the direct effects of the embedding, each block's
        heads (path (a) and β), b_O and MLP, and the final LayerNorm's bias, both towers (docs/math.md,
        "Direct logit effects"), into a ``direct`` group: ``True``/``"margin"`` for the label logit and
        the margin against the mean of the other classes, ``"all"`` for every class as well. With
        ``check_completeness``, checked on every batch: each tower's components add up to the logit
        (``CompletenessError`` naming tower and variant otherwise).

    Returns
    -------
    xarray.DataTree
        Groups ``vision``, ``text``, ``logits`` (and ``attribution``, ``direct``) (docs/store_schema.md),
        provenance in ``attrs``.

    Examples
    --------
    >>> tree = mmlens.trace(model, images, with_reference=True, progress=False)
    >>> sorted(tree.children)
    ['logits', 'text', 'vision']
    >>> alpha = tree["vision"]["prompt_mass"].sel(variant="full", layer=0)  # α at [cls], per image and head
    >>> alpha.dims, bool(((alpha > 0) & (alpha < 1)).all())
    (('image', 'head'), True)

    Direct logit effects: each tower's components add up to the label logit (and the margin)

    >>> direct = mmlens.trace(model, [{"image": images, "label": labels}], direct_effects=True,
    ...                       progress=False)["direct"]
    >>> vision = direct["direct_effect"].where(direct["tower"] == "vision").sum("component")
    >>> bool(abs(vision - direct["direct_total"]).max() < 1e-3 * abs(direct["direct_total"]).max())
    True
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    parts: dict[str, list[xr.Dataset]] = {"vision": [], "logits": [], "attribution": [], "direct": []}
    failed: list[xr.DataArray] = []  # along `failure`, from every batch (concat along `image` keeps one)
    text = None
    for groups, _n in iter_trace_batches(
        model, images_or_loader, variants=_variants(with_reference, variants), all_queries=all_queries,
        store_bias_vectors=store_bias_vectors, mean_bias=mean_bias, intervention=intervention,
        check_completeness=check_completeness, batch_size=batch_size, image_split=image_split,
        class_split=class_split, device=device, progress=progress, attribution=attribution,
        attribution_target=attribution_target, direct_effects=direct_effects,
    ):
        text = groups.get("text", text)
        if "failures" in groups["vision"]:
            failed.append(groups["vision"]["failures"])
            groups["vision"] = groups["vision"].drop_vars(["failures", "failure_path"])
        for name in parts:
            if name in groups and (name != "vision" or "image" in groups[name].dims):
                parts[name].append(groups[name])
    n_failed = sum(f.sizes["failure"] for f in failed)
    if text is None:
        raise ValueError("trace() got no images: the input was empty." if not n_failed else
                         f"trace() got no readable image: all {n_failed} inputs failed to decode (the lines above "
                         "name each file and its error).")
    groups = {name: xr.concat(p, dim="image", data_vars="minimal", coords="minimal", compat="override")
              for name, p in parts.items() if p}
    if failed:
        groups["vision"]["failures"] = xr.concat(failed, dim="failure")
    if progress or n_failed:
        from mmlens._progress import write_line

        write_line(_summary(groups["vision"].sizes["image"], n_failed))
    return xr.DataTree.from_dict(
        {"/": xr.Dataset(attrs=_provenance(model, provenance, device)), "vision": groups["vision"],
         "text": text, **{k: v for k, v in groups.items() if k != "vision"}}
    )


def trace_to_store(
    model,
    loader: Any,
    path: str | os.PathLike | None = None,
    *,
    client: Any = None,
    with_reference: bool = False,
    variants: Sequence[str] | None = None,
    provenance: dict | None = None,
    overwrite: bool = False,
    batch_size: int = 32,
    total: int | None = None,
    **kwargs: Any,
) -> Path:
    """Stream a trace into a zarr store, committed batch by batch; resumable after any interruption.

    Re-running the same call on the same path continues after the last committed batch; a store of
    another run (model, prompts, data selection, seed: ``mmlens.store.schema.IDENTITY_KEYS``) is
    refused, naming each differing key. A resume does not read the items already stored again: a
    Tensor, a map-style Dataset or a DataLoader over one (in order) is restarted at the first item
    left; other iterables are read and skipped. Chunks of images lost or truncated since (see
    ``mmlens store verify``) are re-traced first, exactly those batches. Takes the keyword
    arguments of :func:`trace`. Returns the store path; open it with ``mmlens.open(path)``.

    **On a dask.distributed cluster**: ``trace_to_store(spec, path, client=client)`` with a
    :class:`~mmlens.tracing.spec.TraceSpec` in place of the model and loader (workers build the model
    from the spec; see :func:`mmlens.tracing.distributed.trace_spec_to_store` and docs/scaling.md).
    The store is the same as the one-process trace of the same spec writes.
    """
    if client is not None:  # a TraceSpec on a cluster: the workers build the model (checked there)
        from mmlens.tracing.distributed import trace_spec_to_store

        return trace_spec_to_store(model, loader, client=client, overwrite=overwrite,
                                   progress=kwargs.pop("progress", True), **kwargs)
    if path is None or not isinstance(model, torch.nn.Module):
        raise TypeError("trace_to_store(model, loader, path) traces a model in this process; a TraceSpec is traced "
                        "on a dask.distributed cluster: trace_to_store(spec, path, client=...) (or spec.build() for "
                        f"a one-process trace); found {type(model).__name__}")
    from mmlens.store.writer import StoreWriter

    device = torch.device(kwargs.pop("device", None) or next(model.parameters()).device)
    progress = kwargs.pop("progress", True)
    prov = _provenance(model, {"order": _order(loader), **(provenance or {})}, device)
    if total is None:
        total = _length(loader)
    chosen = _variants(with_reference, variants)

    def run(source: Any, **more: Any) -> Iterator[tuple[dict[str, xr.Dataset], int]]:
        return iter_trace_batches(model, source, variants=chosen, batch_size=batch_size, device=device,
                                  **kwargs, **more)

    with StoreWriter(path, prov, overwrite=overwrite, total=total) as writer:
        for image_lo, _image_hi, item_lo, item_hi in writer.repairs():
            source = _select(loader, item_lo, item_hi)
            if source is None:
                raise RuntimeError(
                    f"{path} has lost images {image_lo}-{_image_hi - 1} (input items {item_lo}-{item_hi - 1}), which "
                    "can be re-traced only from a Tensor, a map-style Dataset or a DataLoader over one; pass one, "
                    "or re-trace with overwrite=True"
                )
            for groups, _n in run(source, progress=False):
                groups.pop("text", None)
                n_images = groups["vision"].sizes.get("image", 0)
                if n_images:
                    writer.rewrite(groups, image_lo)
                image_lo += n_images
        if not writer.complete:
            _append_rest(writer, loader, run, total=total, progress=progress)
    if progress or writer.n_failures:
        from mmlens._progress import write_line

        write_line(_summary(writer.n_images, writer.n_failures))
    return Path(path)


def _append_rest(writer: Any, loader: Any, run: Callable, *, total: int | None, progress: bool) -> None:
    """Trace the items after the committed ones into ``writer`` (skipping by index where the input seeks)."""
    done = writer.n_done
    rest = _select(loader, done, total) if done and total is not None else None
    if rest is not None:  # skip by index: the stored items are not decoded again
        batches = run(rest, start=done, total=total, progress=progress)
    else:
        batches = run(loader, skip=done, total=total, progress=progress)
    for groups, n in batches:
        writer.append(groups, n_items=n)


def _length(source: Any) -> int | None:
    """Input items of a Tensor, a Dataset, or a DataLoader over a map-style Dataset (None when unknown)."""
    if isinstance(source, torch.utils.data.DataLoader):
        source = source.dataset
    if isinstance(source, torch.utils.data.IterableDataset):
        return None
    try:
        return len(source) if isinstance(source, (torch.Tensor, torch.utils.data.Dataset)) else None
    except TypeError:
        return None


def _order(source: Any) -> str:
    """How the input is ordered, for the resume identity: ``sequential``, ``shuffled`` or ``iterable``."""
    if isinstance(source, torch.utils.data.DataLoader):
        if isinstance(source.dataset, torch.utils.data.IterableDataset):
            return "iterable"
        return "sequential" if isinstance(source.sampler, torch.utils.data.SequentialSampler) else "shuffled"
    if isinstance(source, (torch.Tensor, torch.utils.data.Dataset)):
        return "sequential"
    return "iterable"


def _select(source: Any, lo: int, hi: int | None) -> Any:
    """Input items ``lo:hi`` of ``source`` without reading the others, or None when the source cannot seek.

    A DataLoader is rebuilt over ``Subset(dataset, range(lo, hi))`` with the same batch size, collate
    function and workers, so batches keep their boundaries (the resume point is a batch boundary).
    """
    if hi is None:
        return None
    if isinstance(source, torch.Tensor):
        return source[lo:hi]
    if isinstance(source, torch.utils.data.DataLoader):
        ds = source.dataset
        if (isinstance(ds, torch.utils.data.IterableDataset) or source.batch_size is None
                or not isinstance(source.sampler, torch.utils.data.SequentialSampler)):
            return None
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, range(lo, hi)), batch_size=source.batch_size, collate_fn=source.collate_fn,
            num_workers=source.num_workers, pin_memory=source.pin_memory, drop_last=source.drop_last,
            worker_init_fn=source.worker_init_fn, timeout=source.timeout,
            **({"prefetch_factor": source.prefetch_factor} if source.num_workers else {}),
        )
    if isinstance(source, torch.utils.data.Dataset) and not isinstance(source, torch.utils.data.IterableDataset):
        return torch.utils.data.Subset(source, range(lo, hi))
    return None


def _failures(failures: Sequence[tuple[str, str]]) -> xr.DataArray:
    """``vision/failures``: the error of each unreadable input, its path as the ``failure_path`` coordinate."""
    return xr.DataArray(np.array([err for _, err in failures], dtype=object), dims="failure",
                        coords={"failure_path": ("failure", np.array([p for p, _ in failures], dtype=object))})


def _report_skipped(failures: Iterable[tuple[str, str]]) -> None:
    """One line per unreadable input, printed above the progress bar (not a warning: data, not code)."""
    from mmlens._progress import write_line

    for path, err in failures:
        write_line(f"skipped {path}: {err}")


def _summary(n_images: int, n_skipped: int) -> str:
    """The last line of a trace: how many images were traced and how many inputs were skipped."""
    return f"{n_images} images, {n_skipped} skipped (see vision/failures)"
