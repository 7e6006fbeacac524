"""Evaluation: base / novel accuracy per dataset, seed, method and route-ablation variant, as xarray.

The result of :func:`evaluate` is an ``xarray.Dataset`` with dims ``(dataset, seed, method, variant,
split)`` holding ``accuracy`` (%), ``correct`` and ``total``. Variant labels are read by
:mod:`mmlens.store.variants`; the tables (``summary``, ``combine``, ``to_markdown``, ``to_csv``) live
in :mod:`mmlens.stats.tables` (torch-free) and stay reachable here under their old names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmlens.store.variants import Variant, ablation_variants, parse_variant

if TYPE_CHECKING:
    import xarray as xr

    from mmlens.models.precision import Precision

__all__ = ["PROTOCOLS", "Variant", "ablation_variants", "evaluate", "parse_variant"]

#: Table functions defined in mmlens.stats.tables, reachable here under their old names (loaded on first use,
#: so that importing the evaluator stays free of xarray).
_TABLES = {"combine": "combine_results", "summary": "accuracy_summary", "to_markdown": "to_markdown",
           "to_csv": "to_csv"}


def __getattr__(name: str) -> Any:
    if name in _TABLES:
        from mmlens.stats import tables

        return getattr(tables, _TABLES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

PROTOCOLS = ("base_to_novel", "cross_dataset", "domain_generalisation")


# ---------------------------------------------------------------------------------------------- entries
@dataclass
class _Entry:
    """One set of prompts to evaluate: a model (or a prompt file loaded on demand) and where it came from."""

    method: str
    seed: int
    dataset: str | None  # the dataset it was trained on (None: unknown -> evaluated on every dataset)
    source: Any  # PromptedCLIP or Path
    training: dict[str, Any]
    classnames: list[str] | None
    trainable_parameters: int | None = None
    prompt_sha256: str = ""

    def model(self, clip: Any) -> Any:
        if not isinstance(self.source, (str, os.PathLike)):
            return self.source
        if clip is None:
            raise ValueError("Evaluating prompt files needs the base model: pass clip=mmlens.load_clip(...).")
        from mmlens.models.checkpoints import load_prompts

        return load_prompts(self.source, clip)


def _prompt_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("prompts.safetensors")) or sorted(path.rglob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"No prompt files (*.safetensors) under {path}.")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"No prompt file at {path}. Train one with mmlens.train.fit / `mmlens train`.")
    return [path]


def _entries(model_or_prompts: Any, seeds: Sequence[int] | None) -> list[_Entry]:
    from mmlens.models.checkpoints import read_prompt_file

    items = model_or_prompts
    if isinstance(items, (str, os.PathLike)) or not isinstance(items, Iterable):
        items = [items]
    entries: list[_Entry] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            for f in _prompt_files(Path(item).expanduser()):
                _, meta = read_prompt_file(f)
                training = meta.get("training") or {}
                seed = int(training.get("seed", seeds[0] if seeds else 1))
                if seeds and seed not in seeds:
                    continue
                entries.append(_Entry(meta["hparams"]["method"], seed, training.get("dataset"), f, training,
                                      list(meta.get("classnames") or []), meta.get("trainable_parameters"),
                                      meta.get("prompt_sha256", "")))
        elif hasattr(item, "prompt_learner") and hasattr(item, "method"):
            if seeds is not None and len(seeds) != 1:
                raise ValueError(f"A model object is one set of prompts: give seeds=<one int> as its seed label "
                                 f"(got {list(seeds)}), or evaluate prompt files that record their seed.")
            from mmlens.models.checkpoints import prompt_sha256

            entries.append(_Entry(item.method, int(seeds[0]) if seeds else 1, None, item, {}, list(item.classnames),
                                  item.trainable_parameter_count(), prompt_sha256(item.prompt_state_dict())))
        else:
            raise TypeError(f"Expected a PromptedCLIP, a prompt file or a folder of prompt files; got "
                            f"{type(item).__name__}.")
    if not entries:
        raise ValueError(f"No prompts to evaluate in {model_or_prompts!r} (seeds={seeds}).")
    return entries


# ---------------------------------------------------------------------------------------------- data
def _default_splits(protocol: str) -> tuple[str, ...]:
    return ("base", "novel") if protocol == "base_to_novel" else ("all",)


def _default_datasets(protocol: str, entries: list[_Entry], root: Any) -> list[str]:
    from mmlens.data.protocol import cross_dataset_source, cross_dataset_targets, domain_generalisation_targets
    from mmlens.train._data import dataset_present

    if protocol == "base_to_novel":
        names = sorted({e.dataset for e in entries if e.dataset})
        if not names:
            raise ValueError("Which datasets? The prompts do not record a training dataset: pass datasets=[...].")
        return names
    source = cross_dataset_source()
    candidates = cross_dataset_targets(source) if protocol == "cross_dataset" else domain_generalisation_targets(source)
    present = [n for n in candidates if dataset_present(n, root)]
    if not present:
        raise FileNotFoundError(f"None of the {protocol} targets ({', '.join(candidates)}) is under data root {root}.")
    missing = sorted(set(candidates) - set(present))
    if missing:
        warnings.warn(f"{protocol}: not under {root}, skipped: {', '.join(missing)}.", stacklevel=3)
    return present


class _Data:
    """Evaluation / training splits of the requested datasets, built once and cached."""

    def __init__(self, datasets: Any, root: Any, size: tuple[int, int], shots: int | None):
        self.root, self.size, self.shots = root, size, shots
        self.given: dict[str, Mapping[str, Any]] = {}
        if isinstance(datasets, Mapping):
            self.given = {str(k): v for k, v in datasets.items()}
            self.names = list(self.given)
        elif isinstance(datasets, str):
            self.names = [datasets]
        else:
            self.names = [str(d) for d in datasets]
        self._cache: dict[tuple, Any] = {}

    def split(self, name: str, split: str) -> Any:
        key = (name, split)
        if key not in self._cache:
            if name in self.given:
                if split not in self.given[name]:
                    raise KeyError(f"datasets[{name!r}] has no {split!r} entry (has {sorted(self.given[name])}).")
                self._cache[key] = self.given[name][split]
            else:
                from mmlens.train._data import build_split

                self._cache[key] = build_split(name, self.root, "test", self.size, subset=split)
        return self._cache[key]

    def train(self, name: str, entry: _Entry) -> Any:
        """The training images of an entry (for ``constant_bias``'s mean β)."""
        source = entry.training.get("dataset") or name
        shots = entry.training.get("shots", self.shots)
        subset = entry.training.get("subset") or "base"
        key = (source, "train", entry.seed, shots, subset)
        if key in self._cache:
            return self._cache[key]
        if source in self.given and "train" in self.given[source]:
            ds = self.given[source]["train"]
        elif source in self.given or self.root is None:
            raise ValueError(f"constant_bias needs the training images of {source!r}: add a 'train' entry to "
                             f"datasets[{source!r}] (or give datasets by name with root=...).")
        else:
            from mmlens.train._data import build_split

            ds = build_split(source, self.root, "train", self.size, shots=shots, seed=entry.seed, subset=subset)
        self._cache[key] = ds
        return ds


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(
    model_or_prompts: Any,
    datasets: Any = None,
    *,
    seeds: int | Sequence[int] | None = None,
    variants: Sequence[str | tuple | Variant] = ("full",),
    protocol: str = "base_to_novel",
    splits: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    clip: Any = None,
    shots: int | None = 16,
    batch_size: int = 64,
    device: str = "cpu",
    precision: str = "auto",
    normalize: bool = True,
    num_workers: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Accuracy of prompts per dataset, seed, method, variant and split, as an ``xarray.Dataset``.

    Parameters
    ----------
    model_or_prompts : PromptedCLIP, path, or a sequence of them
        A model (one set of prompts; ``seeds`` gives its seed label), prompt files written by
        :func:`mmlens.train.fit` / :func:`mmlens.save_prompts`, or folders searched for
        ``prompts.safetensors``. Files record their method, training dataset and seed.
    datasets : str, sequence of str, or mapping
        Dataset names (read from ``root``: the ``test`` split, restricted to each ``split``'s classes),
        or ``{name: {split: Dataset}}`` with torch Datasets of item dicts having ``.classnames``
        (add ``"train"`` for ``constant_bias``). Default: the datasets the prompt files were trained on
        (base-to-novel), or the protocol's targets present under ``root`` (cross-dataset / DG).
    seeds : int or sequence of int, optional
        Keep only prompt files of these seeds; for a model object, its seed label (default 1).
    variants : sequence
        ``full`` (the model), ``zeroshot`` (prompts off) and the route ablations of docs/math.md
        (``bias_only``, ``redistribution_only``, ``constant_bias``, ``drop_prompts``), each optionally
        restricted to a branch and a layer group: ``"bias_only:vision"``, ``"drop_prompts:both:carried"``
        (see :func:`ablation_variants`). ``constant_bias`` uses the mean β measured on the entry's own
        few-shot training images (:func:`mmlens.tracing.interventions.measure_mean_bias`).
    protocol : str
        ``"base_to_novel"``: prompts trained on dataset D are evaluated on D's ``base`` and ``novel``
        classes. ``"cross_dataset"`` / ``"domain_generalisation"``: every set of prompts on every
        dataset, all classes (split ``"all"``).
    splits : sequence of str, optional
        Override the protocol's splits (``base``, ``novel``, ``all``).
    root : path, optional
        Data root for datasets given by name.
    clip : LoadedCLIP, optional
        The base model prompt files are loaded onto (required for files).
    shots : int
        Few-shot size for ``constant_bias`` training images when a file does not record it.
    batch_size, device, precision, normalize, num_workers, progress
        As in :func:`mmlens.train.fit`; ``precision`` is ``"auto"`` (float16 autocast on CUDA, float32
        elsewhere), ``"fp32"``, ``"amp"`` (float16 autocast) or ``"bf16"`` (bfloat16 autocast), on any
        device (:mod:`mmlens.models.precision`). Features and logits are compared in float32.

    Returns
    -------
    xarray.Dataset
        Dims ``dataset, seed, method, variant, split``. Variables ``accuracy`` (%, NaN where not
        evaluated), ``correct``, ``total`` and ``prompt_sha256`` (dataset, seed, method). Coords
        ``variant`` carries ``route``, ``branch``, ``layers``; ``method`` carries
        ``trainable_parameters``. ``attrs['skipped']`` lists variants a method does not support.

    Examples
    --------
    >>> from mmlens.data.toyworld import build_in_memory
    >>> test = {"ToySatellite": {s: build_in_memory("satellite", "test", subset=s) for s in ("base", "novel")}}
    >>> ds = evaluate(model, test, variants=["full", "zeroshot"], progress=False)
    >>> dict(ds.accuracy.sizes), int(ds.total.sel(variant="full", split="novel").squeeze())
    ({'dataset': 1, 'seed': 1, 'method': 1, 'variant': 2, 'split': 2}, 128)
    >>> from mmlens.stats.tables import to_markdown
    >>> print(to_markdown(ds).splitlines()[0])
    | method / variant | params | Base | Novel | HM | ToySatellite |

    Prompt files trained by ``mmlens train``, on the datasets under a data root:
    ``evaluate("runs/", root="~/data", clip=clip, variants=["full", "zeroshot"])``.
    """
    import torch
    import xarray as xr

    from mmlens.models.precision import resolve_precision
    from mmlens.train.transforms import input_spec

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: use one of {PROTOCOLS}.")
    seeds_list = None if seeds is None else ([int(seeds)] if isinstance(seeds, (int, np.integer)) else
                                             [int(s) for s in seeds])
    entries = _entries(model_or_prompts, seeds_list)
    parsed = [parse_variant(v) for v in variants]
    labels = [v.label for v in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Duplicate variants: {labels}.")
    split_names = tuple(splits) if splits is not None else _default_splits(protocol)
    if datasets is None:
        datasets = _default_datasets(protocol, entries, root)
    probe = entries[0].model(clip)
    data = _Data(datasets, root, input_spec(probe), shots)  # the spec: size and the model's resize geometry
    dev = torch.device(device)
    amp = resolve_precision(precision, dev, allowed=("auto", "fp32", "amp", "bf16"))

    keys = [(e.dataset, e.seed, e.method) for e in entries]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"Two prompt sets share (trained-on dataset, seed, method) {sorted(dup, key=str)}: "
                         "evaluate them in separate calls.")
    methods = list(dict.fromkeys(e.method for e in entries))
    seed_coord = sorted({e.seed for e in entries})
    shape = (len(data.names), len(seed_coord), len(methods), len(parsed), len(split_names))
    correct = np.zeros(shape, dtype=np.int64)
    total = np.zeros(shape, dtype=np.int64)
    sha = np.full(shape[:3], "", dtype=object)
    params = {e.method: e.trainable_parameters for e in entries}
    skipped: list[str] = []

    jobs = [(e, d) for e in entries for d in data.names
            if protocol != "base_to_novel" or e.dataset is None or e.dataset == d]
    if not jobs:
        raise ValueError(f"No prompts were trained on the datasets {data.names} (they were trained on "
                         f"{sorted({str(e.dataset) for e in entries})}); pass protocol='cross_dataset' to evaluate "
                         "them on other datasets.")
    from mmlens._progress import progress_bar

    bar = progress_bar(total=len(jobs) * len(split_names) * len(parsed), desc="evaluate", enabled=progress,
                       unit="eval")
    frozen_cache: dict[tuple, Any] = {}  # frozen-CLIP image features, shared by every entry
    for entry, dname in jobs:
        model = entry.model(clip).to(dev)
        model.eval()
        params[entry.method] = model.trainable_parameter_count()
        i_d, i_s, i_m = data.names.index(dname), seed_coord.index(entry.seed), methods.index(entry.method)
        sha[i_d, i_s, i_m] = entry.prompt_sha256
        mean_bias = None
        if any(v.route == "constant_bias" for v in parsed) and entry.method != "zeroshot":
            mean_bias = _mean_bias(model, data.train(dname, entry), entry, input_spec(model), normalize,
                                   batch_size, num_workers, dev)
        for i_p, split in enumerate(split_names):
            ds = data.split(dname, split)
            from mmlens.train._data import classnames_of

            model.set_classnames(classnames_of(ds))
            cache = {("frozen",): frozen_cache.setdefault((id(model.clip), dname, split), {})}
            for i_v, variant in enumerate(parsed):
                if entry.method == "zeroshot" and variant.route not in ("full", "zeroshot"):
                    bar.update(1)  # no prompts: route ablations do not apply (left NaN)
                    continue
                try:
                    c, t = _accuracy(model, ds, variant, mean_bias, cache, batch_size=batch_size,
                                     normalize=normalize, num_workers=num_workers, device=dev, amp=amp)
                except (ValueError, NotImplementedError) as err:
                    if variant.route in ("full", "zeroshot"):
                        raise
                    skipped.append(f"{entry.method} / {variant.label}: {err}")
                    c, t = 0, 0
                correct[i_d, i_s, i_m, i_v, i_p], total[i_d, i_s, i_m, i_v, i_p] = c, t
                bar.update(1)
        if entry.classnames:
            model.set_classnames(entry.classnames)
    bar.close()
    skipped = list(dict.fromkeys(skipped))
    if skipped:
        warnings.warn("Some variants do not apply and were left NaN:\n  " + "\n  ".join(skipped[:10]), stacklevel=2)

    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)
    dims = ("dataset", "seed", "method", "variant", "split")
    out = xr.Dataset(
        {
            "accuracy": (dims, accuracy, {"units": "%", "long_name": "top-1 accuracy"}),
            "correct": (dims, correct, {"long_name": "correctly classified images"}),
            "total": (dims, total, {"long_name": "images evaluated (0: not evaluated)"}),
            "prompt_sha256": (dims[:3], sha.astype(str), {"long_name": "hash of the evaluated prompts"}),
        },
        coords={
            "dataset": list(data.names),
            "seed": seed_coord,
            "method": methods,
            "variant": labels,
            "split": list(split_names),
            "route": ("variant", [v.route for v in parsed]),
            "branch": ("variant", [v.branch for v in parsed]),
            "layers": ("variant", [v.layers for v in parsed]),
            "trainable_parameters": ("method", [int(params[m] or 0) for m in methods]),
        },
        attrs={**_provenance(protocol, clip or getattr(probe, "clip_source", None), dev, skipped),
               "precision": amp.name},
    )
    return out


def _provenance(protocol: str, clip: Any, device: Any, skipped: list[str]) -> dict[str, Any]:
    import open_clip
    import torch

    from mmlens._version import __version__

    source = clip if isinstance(clip, dict) else {"name": getattr(clip, "name", None),
                                                   "pretrained": getattr(clip, "pretrained", {}) or {}}
    return {
        "protocol": protocol,
        "base_model": str(source.get("name")),
        "base_weights_sha256": str((source.get("pretrained") or {}).get("sha256")),
        "mmlens_version": __version__,
        "torch_version": str(torch.__version__),
        "open_clip_version": str(open_clip.__version__),
        "device": str(device),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "skipped": "\n".join(skipped),
    }


def _images(ds: Any, spec: Any, normalize: bool, batch_size: int, num_workers: int):
    from mmlens.train._data import batches, model_inputs

    for batch in batches(ds, batch_size, num_workers=num_workers):
        yield model_inputs(batch["image"], spec, normalize), batch["label"]


def _mean_bias(model, train_ds, entry: _Entry, spec, normalize, batch_size, num_workers, device):
    from mmlens.tracing.interventions import measure_mean_bias
    from mmlens.train._data import classnames_of

    model.set_classnames(classnames_of(train_ds, fallback=entry.classnames))
    return measure_mean_bias(model, (x for x, _ in _images(train_ds, spec, normalize, batch_size, num_workers)),
                             branch="both", device=device)


def _intervention(model, variant: Variant, mean_bias):
    if variant.route == "full":
        return nullcontext()
    from mmlens.tracing.interventions import intervene

    return intervene(model, variant.route, branch=variant.branch,
                     layers=None if variant.layers == "all" else variant.layers,
                     mean_bias=mean_bias if variant.route == "constant_bias" else None)


def _vision_key(model, variant: Variant) -> tuple:
    """Which image features a variant needs: equal keys give identical features (computed once).

    ``zeroshot`` (prompts off) and ``full`` of a method without vision-side parameters (CoOp, deep
    language prompting) see the frozen CLIP's features; ablations of the text branch leave the image
    tower as in ``full``.
    """
    no_vision = all(kind == "none" for kind in model.layer_kinds("vision"))
    if variant == Variant("zeroshot") or (no_vision and variant.route == "full"):
        return ("frozen",)
    if variant.route == "full" or variant.branch == "text":
        return ("full",)
    return ("variant", variant.label)


def _accuracy(model, ds, variant: Variant, mean_bias, cache: dict, *, batch_size, normalize, num_workers, device,
              amp: Precision | None = None) -> tuple[int, int]:
    """Correct predictions and images of ``ds`` under ``variant``; image features are reused via ``cache``."""
    import torch

    from mmlens.train.transforms import input_spec

    key = _vision_key(model, variant)
    store = cache.setdefault(key, {})
    with torch.no_grad(), (amp.autocast() if amp is not None else nullcontext()):
        with _intervention(model, variant, mean_bias):
            text = model.text_features().float()
        if "features" not in store:
            vision_variant = {("frozen",): Variant("zeroshot"), ("full",): Variant("full")}.get(key, variant)
            feats, labels = [], []
            with _intervention(model, vision_variant, mean_bias):
                for images, y in _images(ds, input_spec(model), normalize, batch_size, num_workers):
                    feats.append(model.encode_image(images.to(device), normalize=True).float())
                    labels.append(y)
            store["features"] = torch.cat(feats) if feats else torch.zeros(0, text.shape[1], device=device)
            store["labels"] = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        # PromptedCLIP.forward's logits: scale * cos(image, text) (+ logit bias)
        logits = model.clip.logit_scale.exp().float() * store["features"] @ text.T
        if getattr(model.clip, "logit_bias", None) is not None:
            logits = logits + model.clip.logit_bias.float()
    correct = int((logits.argmax(-1).cpu() == store["labels"]).sum())
    return correct, len(store["labels"])
