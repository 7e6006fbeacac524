"""``TraceSpec``: a trace run described by value (model, prompts, data, options), and the one place that builds it.

``mmlens trace`` builds its model and dataset from a spec, and so does every worker of a distributed
trace (:mod:`mmlens.tracing.distributed`): a worker receives the spec, never a pickled model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TraceSpec", "BuiltTrace", "ClusterError", "add_cluster_arguments", "run_seed", "build_prompted",
           "file_list_sha256"]


class ClusterError(RuntimeError):
    """The cluster cannot run a trace: unreachable scheduler, missing dask-cuda, mismatched versions, no workers."""


@dataclass(frozen=True)
class TraceSpec:
    """What a trace run is: the keys of the store's provenance, plus the trace options.

    Frozen and made of plain values (strings, numbers, tuples), so it pickles in microseconds and
    means the same on every machine that has the weights and the data at the same paths.

    Attributes
    ----------
    model, pretrained, quick_gelu
        The CLIP (``--model``, ``--pretrained``: an open_clip tag, a weights file, ``random``;
        ``None``: the shipped ``toyworld`` weights for ``mmlens-toy``, ``openai`` otherwise).
    prompts, method, depth, n_ctx
        A prompt file (its method and depth come from it), else random prompts of ``method``.
    dataset, data_root, split, subset, limit
        The items traced, in order: ``mmlens.data.build(dataset, data_root, split, subset)``, the first
        ``limit`` of them.
    seed
        The run's seed (:func:`run_seed`; seeds random weights and prompt inits).
    precision, device, batch_size
        How the model runs (``auto``: fp16 on cuda, fp32 elsewhere).
    with_reference, variants, all_queries, bias_vectors, attribution, direct_effects
        Trace options, as ``mmlens trace`` takes them (``variants``: route ablations besides ``full``).

    Examples
    --------
    >>> spec = TraceSpec(dataset="EuroSAT", data_root="/data", limit=64, with_reference=True)
    >>> spec.model, spec.chosen_variants
    ('mmlens-toy', ('full', 'zeroshot'))
    >>> TraceSpec.from_args(spec.to_args()) == spec
    True
    """

    dataset: str
    data_root: str
    model: str = "mmlens-toy"
    pretrained: str | None = None
    quick_gelu: bool | None = None
    prompts: str | None = None
    method: str = "maple"
    depth: int | None = None
    n_ctx: int = 2
    split: str = "test"
    subset: str = "all"
    limit: int | None = None
    seed: int = 0
    precision: str = "auto"
    device: str = "cpu"
    batch_size: int = 32
    with_reference: bool = False
    variants: tuple[str, ...] = ()
    all_queries: bool = False
    bias_vectors: bool = False
    attribution: tuple[str, ...] = ()
    direct_effects: bool | str = False
    #: keyword arguments of :func:`~mmlens.tracing.tracer.iter_trace_batches` not covered above (rare)
    extra: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TraceSpec:
        """The spec of ``mmlens trace``'s arguments (``args.seed`` resolved with ``run_seed`` first)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if hasattr(args, f.name) and f.name not in ("seed", "extra")}
        values["seed"] = run_seed(getattr(args, "prompts", None), getattr(args, "seed", None))
        values["variants"] = tuple(getattr(args, "variants", None) or ())
        values["attribution"] = tuple(getattr(args, "attribution", None) or ())
        values["direct_effects"] = getattr(args, "direct_effects", False) or False
        return cls(**values)

    def to_args(self) -> argparse.Namespace:
        """The spec as the ``argparse.Namespace`` of ``mmlens trace`` (what :func:`build_prompted` reads)."""
        return argparse.Namespace(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def chosen_variants(self) -> tuple[str, ...]:
        """The variants traced, in store order (``full`` first, ``zeroshot`` with ``with_reference``)."""
        from mmlens.tracing.tracer import _variants

        return tuple(_variants(self.with_reference, list(self.variants) or None))

    def build(self, *, quiet: bool = False) -> BuiltTrace:
        """Build the model, the dataset and the trace keywords of this spec (torch, open_clip, the data).

        Parameters
        ----------
        quiet
            Do not print build notes (a worker builds the same model as the client already said).
        """
        import contextlib
        import io

        import torch

        from mmlens.data import build, get_manifest
        from mmlens.data.transforms import eval_mask_transform, input_spec
        from mmlens.models.precision import resolve_precision

        manifest = get_manifest(self.dataset)
        probe = build(manifest, self.data_root, self.split, subset=self.subset)
        args = self.to_args()
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            model = build_prompted(args, probe.classnames)
        geometry = input_spec(model)  # the geometry of model.preprocess, for the masks
        dataset = build(manifest, self.data_root, self.split, subset=self.subset, transform=model.preprocess,
                        mask_transform=eval_mask_transform(geometry), on_error="skip")
        items = dataset.items
        if self.limit is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(self.limit, len(dataset))))
            items = items[: len(dataset)]
        provenance = {"dataset": manifest.name, "manifest_version": str(manifest.manifest_version),
                      "seed": self.seed,
                      # what decides which items are traced, and in what order: the resume identity
                      "split": self.split, "subset": self.subset, "limit": self.limit, "order": "sequential",
                      "file_list_sha256": file_list_sha256(items, self.data_root)}
        options: dict[str, Any] = {
            "variants": list(self.chosen_variants), "all_queries": self.all_queries,
            "store_bias_vectors": self.bias_vectors, "attribution": list(self.attribution) or None,
            "attribution_target": "label", "batch_size": self.batch_size, "device": self.device,
            "image_split": self.subset, "class_split": [self.subset] * len(model.classnames), **dict(self.extra),
        }
        if self.direct_effects:  # passed only when asked, so the option is as optional as the tracer makes it
            options["direct_effects"] = self.direct_effects
        precision = resolve_precision(self.precision, self.device, auto_cuda="fp16")
        return BuiltTrace(self, model, dataset, list(items), provenance, options, precision)


@dataclass
class BuiltTrace:
    """A built :class:`TraceSpec`: the model, the dataset (indexable, in trace order) and how to trace it.

    ``options`` are keyword arguments of :func:`~mmlens.tracing.tracer.iter_trace_batches`;
    ``provenance`` the data's provenance keys; run the model under ``precision.autocast()``.
    """

    spec: TraceSpec
    model: Any
    dataset: Any
    items: Sequence[Any]
    provenance: dict[str, Any]
    options: dict[str, Any]
    precision: Any

    def loader(self, dataset: Any | None = None) -> Any:
        """A DataLoader over ``dataset`` (default the whole one) in the spec's batches."""
        import torch

        from mmlens.data import collate

        return torch.utils.data.DataLoader(self.dataset if dataset is None else dataset,
                                           batch_size=self.spec.batch_size, collate_fn=collate)


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers N``, ``--scheduler ADDRESS`` (``mmlens trace``, ``mmlens reproduce``): trace on dask.distributed."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="trace on a local dask.distributed cluster of N worker processes (one thread each); "
                            "with --device cuda, dask-cuda's LocalCUDACluster: one worker per visible GPU "
                            "(docs/scaling.md; needs the `cluster` extra)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="trace on an existing dask.distributed cluster, e.g. tcp://head:8786 (started with "
                            "`dask scheduler` and `dask worker` / `dask cuda worker` on each node; docs/scaling.md)")


def _precision(args: argparse.Namespace):
    """The resolved ``--precision`` of ``args`` on ``--device`` (``auto``: fp16 on cuda, fp32 elsewhere)."""
    from mmlens.models.precision import resolve_precision

    return resolve_precision(getattr(args, "precision", "auto"), args.device, auto_cuda="fp16")


def run_seed(prompts: str | None, seed: int | None) -> int:
    """The run's seed: the training seed ``prompts`` records, else ``seed``, else 0.

    Seeds are the unit of every statistic over runs, so a ``--seed`` that disagrees with the
    prompts' own is refused rather than stored.

    Examples
    --------
    >>> run_seed(None, 3)
    3
    >>> run_seed(None, None)
    0
    """
    from mmlens.models.checkpoints import checkpoint_seed

    recorded = checkpoint_seed(prompts) if prompts is not None else None
    if recorded is None:
        return 0 if seed is None else int(seed)
    if seed is not None and int(seed) != recorded:
        raise ValueError(f"--seed {seed} disagrees with --prompts {prompts}, which were trained with seed "
                         f"{recorded}. Drop --seed (the prompts' seed is the run's seed) or pass --seed {recorded}.")
    return recorded


def build_prompted(args: argparse.Namespace, classnames: list[str]):
    """A PromptedCLIP from CLI arguments (``args.seed`` is the run's seed, see :func:`run_seed`)."""
    from pathlib import Path

    import torch

    from mmlens.models import PromptedCLIP, import_prompts, load_clip, load_prompts
    from mmlens.models.loading import cli_pretrained
    from mmlens.models.prompted import prompt_depth

    seed = getattr(args, "seed", None)
    torch.manual_seed(0 if seed is None else seed)  # random weights and prompt inits repeat on a rerun
    clip = load_clip(args.model, cli_pretrained(args.model, args.pretrained), device=args.device,
                     precision=_precision(args).weights, quick_gelu=getattr(args, "quick_gelu", None))
    if args.prompts is None:
        n_blocks = min(len(clip.model.visual.transformer.resblocks), len(clip.model.transformer.resblocks))
        depth, note = prompt_depth(n_blocks, args.depth)
        if note:
            print(f"note: {note}")
        return PromptedCLIP(clip, classnames, method=args.method, n_ctx=args.n_ctx, depth=depth).to(args.device)
    path = Path(args.prompts)
    if path.suffix == ".safetensors":
        return load_prompts(path, clip, classnames=classnames).to(args.device)
    return import_prompts(path, clip, classnames).to(args.device)  # the file carries its method and depth


def file_list_sha256(items, root) -> str:
    """sha256 of the traced items in order (path relative to the data root, tab, label; one per line).

    Relative paths, so that a store resumes on another machine with the data elsewhere.

    Examples
    --------
    >>> from mmlens.data import Item
    >>> file_list_sha256([Item("/data/a/x.jpg", 0, "cat")], "/data")[:12]
    '353b966897ad'
    """
    import hashlib
    import os

    digest = hashlib.sha256()
    for it in items:
        digest.update(f"{os.path.relpath(it.path, root)}\t{it.label}\n".encode())
    return digest.hexdigest()
