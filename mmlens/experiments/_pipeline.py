"""The steps of ``mmlens reproduce``: per (dataset, seed) prompts → evaluation → traces; then the study-wide outputs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmlens.experiments._ledger import Ledger
from mmlens.experiments._sources import DataSource, resolve_datasets
from mmlens.experiments.config import QUICK
from mmlens.store import schema
from mmlens.tracing.spec import TraceSpec
from mmlens.train.recipes import TOY_RECIPE, prompt_depth, recipe_for

__all__ = ["Config", "Result", "run", "layout"]

SUBFOLDERS = ("prompts", "stores", "results", "figures")


@dataclass
class Config:
    """Settings of a reproduce run (the CLI options, resolved)."""

    out: str
    datasets: list[str]
    seeds: list[int]
    data_root: str | None = None
    model: str = "mmlens-toy"
    pretrained: str | None = "toyworld"
    quick_gelu: bool | None = None  # --quick-gelu: the weights file is OpenAI's (None: load_clip decides)
    device: str = "cpu"
    precision: str = "auto"  # mmlens.models.precision: one choice for fit, evaluate and trace
    maple_weights: str | None = None
    methods: list[str] = field(default_factory=lambda: ["maple", "bias"])
    # the toyworld recipe unless from_args picks MaPLe's for real data
    shots: int = TOY_RECIPE["shots"]
    epochs: int = TOY_RECIPE["epochs"]
    batch_size: int = TOY_RECIPE["batch_size"]
    lr: float = TOY_RECIPE["lr"]
    depth: int | None = None  # None: the recipe's depth clipped to the model (recipes.prompt_depth)
    crop_scale: tuple[float, float] = TOY_RECIPE["crop_scale"]
    max_images: int | None = None
    ablations: str = "branches"
    n_boot: int = 1000
    toy_size: str = "small"
    threads: int = 1
    explorer: bool = True
    restart: bool = False
    progress: bool = True
    quick: bool = False
    workers: int | None = None  # --workers: traces on a local dask cluster (same stores; not a setting)
    scheduler: str | None = None  # --scheduler: traces on an existing dask cluster

    @classmethod
    def from_args(cls, args: Any) -> Config:
        """Resolve CLI arguments: defaults of the model, toyworld vs real data, ``--quick``."""
        datasets = resolve_datasets(args.datasets, args.data_root)
        seeds = list(args.seeds or [1, 2, 3])
        from mmlens.models.loading import cli_pretrained

        pretrained = cli_pretrained(args.model, args.pretrained)
        recipe = recipe_for(args.model)
        recipe["depth"] = None  # resolved against the model's blocks once it is loaded (Runner.depth)
        extra: dict[str, Any] = {"max_images": None, "ablations": "branches", "n_boot": 1000}
        if args.quick:
            datasets, seeds = datasets[:1], seeds[:1]
            recipe.update({k: QUICK[k] for k in ("shots", "epochs", "batch_size")})
            extra.update({k: QUICK[k] for k in ("max_images", "ablations", "n_boot")})
        for key in ("shots", "epochs", "batch_size", "lr", "depth"):
            if getattr(args, key, None) is not None:
                recipe[key] = getattr(args, key)
        for key in ("max_images", "ablations", "n_boot"):
            if getattr(args, key, None) is not None:
                extra[key] = getattr(args, key)
        default_methods = ["maple"] if args.maple_weights else ["maple", "bias"]
        methods = list(dict.fromkeys(args.methods or default_methods))
        if args.maple_weights and "bias" in methods:
            raise ValueError("--methods bias trains bias tuning, --maple-weights imports MaPLe prompts: "
                             "run them into separate --out folders.")
        if args.maple_weights and not Path(args.maple_weights).expanduser().is_dir():
            raise FileNotFoundError(f"--maple-weights {args.maple_weights} is not a folder.")
        return cls(out=str(args.out), datasets=datasets, seeds=seeds, data_root=args.data_root, model=args.model,
                   pretrained=pretrained, quick_gelu=getattr(args, "quick_gelu", None), device=args.device,
                   precision=getattr(args, "precision", None) or "auto",
                   maple_weights=args.maple_weights, methods=methods,
                   toy_size=args.toy_size, threads=args.threads or 1,
                   explorer=not args.no_explorer, restart=args.restart, progress=not args.no_progress,
                   quick=bool(args.quick), workers=getattr(args, "workers", None),
                   scheduler=getattr(args, "scheduler", None), **recipe, **extra)

    def settings(self) -> dict[str, Any]:
        """What changes results (a folder made with other settings is refused)."""
        keep = ("model", "pretrained", "data_root", "maple_weights", "shots", "epochs", "batch_size", "lr",
                "depth", "crop_scale", "max_images", "toy_size")
        s = {k: getattr(self, k) for k in keep}
        s["crop_scale"] = [float(v) for v in self.crop_scale]  # a list, as it reads back from JSON
        if self.quick_gelu is not None:  # only when declared, so folders made before the flag still match
            s["quick_gelu"] = self.quick_gelu
        s["data_root"] = str(Path(self.data_root).expanduser().resolve()) if self.data_root else None
        s["maple_weights"] = str(Path(self.maple_weights).expanduser().resolve()) if self.maple_weights else None
        return s


@dataclass
class Result:
    """What :func:`run` returns: the output folder, its main files, headline numbers and a printable summary."""

    out: Path
    files: dict[str, Path]
    seconds: float
    steps_run: list[str]
    steps_skipped: list[str]
    headline: list[str]
    summary: str


def layout(out: Path) -> dict[str, Path]:
    """The files of an output folder."""
    return {
        "steps": out / "steps.json",
        "accuracy_md": out / "results" / "accuracy.md",
        "accuracy_csv": out / "results" / "accuracy.csv",
        "accuracy_nc": out / "results" / "accuracy.nc",
        "statistics_csv": out / "results" / "statistics.csv",
        "statistics_md": out / "results" / "statistics.md",
        "report": out / "report.html",
        "explorer": out / "explorer.html",
        "findings": out / "findings.md",
        "figures": out / "figures",
    }


class _Runner:
    """Holds the loaded CLIP and per-run caches while the steps run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self._clip = None
        self._depth: int | None = None
        self._mean_bias: dict[tuple[str, int], Any] = {}
        self.steps_run: list[str] = []
        self.steps_skipped: list[str] = []
        #: a dask.distributed Client when the traces run on a cluster (--workers / --scheduler)
        self.client: Any = None

    # ------------------------------------------------------------------ shared objects
    @property
    def clip(self) -> Any:
        if self._clip is None:
            import torch

            from mmlens.models import load_clip

            torch.manual_seed(0)  # random weights (--pretrained random) repeat on a rerun, so resuming matches
            self._clip = load_clip(self.cfg.model, self.cfg.pretrained, device=self.cfg.device,
                                   quick_gelu=self.cfg.quick_gelu)
        return self._clip

    @property
    def size(self) -> Any:
        """The CLIP's input spec: size plus its own resize geometry (what trace's preprocess uses)."""
        from mmlens.data.transforms import input_spec

        return input_spec(self.clip)

    def depth(self) -> int:
        """The prompt depth: ``--depth``, else the recipe's clipped to the model (said once, on first use)."""
        if self._depth is None:
            n = min(len(self.clip.model.visual.transformer.resblocks), len(self.clip.model.transformer.resblocks))
            if self.cfg.maple_weights and self.cfg.depth:
                self._depth = self.cfg.depth  # imported checkpoints carry their own depth
            else:
                self._depth, note = prompt_depth(n, self.cfg.depth)
                if note:
                    print(f"note: {note}")
        return self._depth

    def source(self, dataset: str) -> DataSource:
        root = Path(self.cfg.data_root).expanduser() if self.cfg.data_root else None
        return DataSource(dataset, root, self.cfg.toy_size)

    def prompts_path(self, dataset: str, seed: int, method: str) -> Path:
        return self.out / "prompts" / dataset / f"seed{seed}" / method / "prompts.safetensors"

    def store_path(self, dataset: str, seed: int, split: str, method: str = "maple") -> Path:
        name = f"{split}.zarr" if method == "maple" else f"{method}_{split}.zarr"
        return self.out / "stores" / dataset / f"seed{seed}" / name

    def eval_path(self, dataset: str, seed: int, method: str) -> Path:
        return self.out / "results" / "evaluate" / f"{dataset}_seed{seed}_{method}.nc"

    def model(self, dataset: str, seed: int, method: str, classnames: list[str]) -> Any:
        from mmlens.models import load_prompts

        model = load_prompts(self.prompts_path(dataset, seed, method), self.clip, classnames=classnames)
        return model.to(self.cfg.device)

    # ------------------------------------------------------------------ per-run steps
    def prompts(self, dataset: str, seed: int, method: str) -> dict[str, Any]:
        """Train prompts (fit resumes by itself) or import a MaPLe checkpoint; write prompts.safetensors."""
        import torch

        from mmlens.models import PromptedCLIP, save_prompts

        cfg = self.cfg
        path = self.prompts_path(dataset, seed, method)
        train = self.source(dataset).train(seed=seed, shots=cfg.shots, size=self.size)
        if cfg.maple_weights:
            from mmlens.experiments._sources import find_maple_checkpoint
            from mmlens.models.checkpoints import import_prompts

            ckpt = find_maple_checkpoint(cfg.maple_weights, dataset, seed)
            model = import_prompts(ckpt, self.clip, train.classnames, method="maple")
            save_prompts(model, path, extra={"training": {"dataset": dataset, "seed": seed, "imported_from": str(ckpt),
                                                          "shots": cfg.shots, "subset": "base"}})
            return {"prompts": str(path), "imported_from": str(ckpt), "trainable_parameters":
                    model.trainable_parameter_count()}
        from mmlens.train import fit

        torch.manual_seed(seed)
        model = PromptedCLIP(self.clip, train.classnames, method, depth=self.depth(), init_seed=seed)
        result = fit(model, train, seed=seed, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     crop_scale=cfg.crop_scale, device=cfg.device, precision=cfg.precision,
                     checkpoint_dir=path.parent,
                     progress=cfg.progress, name=dataset)
        last = result.history[-1] if result.history else {}
        return {"prompts": str(result.prompts_path), "train_loss": last.get("loss"),
                "train_accuracy": last.get("accuracy"), "images": len(train),
                "trainable_parameters": result.trainable_parameters}

    def variants(self, method: str) -> list[str]:
        """Evaluated variants: full, zeroshot and route ablations per ``--ablations`` (MaPLe only)."""
        from mmlens.store.variants import ablation_variants

        if method != "maple":
            return ["full", "zeroshot"]
        out = ["full", "zeroshot"]
        for route in schema.ABLATION_ROUTES:  # grouped by route: both, vision, text, injected blocks, carried blocks
            branches = ["both"] if self.cfg.ablations == "routes" else list(schema.VARIANT_BRANCHES)
            out += ablation_variants([route], branches, ["all"], reference=False)
            if self.cfg.ablations == "grid":
                out += ablation_variants([route], ["both"], [g for g in schema.LAYER_GROUPS if g != "all"],
                                         reference=False)
        return out

    def evaluate(self, dataset: str, seed: int, method: str) -> dict[str, Any]:
        from mmlens.train import evaluate

        cfg = self.cfg
        src = self.source(dataset)
        train = src.train(seed=seed, shots=cfg.shots, size=self.size)
        data = {"base": src.test("base", size=self.size, max_images=cfg.max_images),
                "novel": src.test("novel", size=self.size, max_images=cfg.max_images), "train": train}
        model = self.model(dataset, seed, method, train.classnames)
        result = evaluate(model, {dataset: data}, seeds=seed, variants=self.variants(method), device=cfg.device,
                          precision=cfg.precision, progress=cfg.progress)
        path = self.eval_path(dataset, seed, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_netcdf(result, path)
        acc = result["accuracy"].sel({"dataset": dataset, "seed": seed, "method": method, "variant": "full"})
        return {"evaluation": str(path), "base": float(acc.sel(split="base")), "novel": float(acc.sel(split="novel"))}

    def mean_bias(self, dataset: str, seed: int, model: Any) -> Any:
        """Dataset-mean β on the training images (for the ``constant_bias`` ablation), cached per run."""
        key = (dataset, seed)
        if key not in self._mean_bias:
            import torch

            from mmlens.data.transforms import input_spec
            from mmlens.tracing.interventions import measure_mean_bias
            from mmlens.train import batches, model_inputs

            train = self.source(dataset).train(seed=seed, shots=self.cfg.shots, size=self.size)
            spec = input_spec(model)
            names = list(model.classnames)
            model.set_classnames(train.classnames)
            with torch.no_grad():
                self._mean_bias[key] = measure_mean_bias(
                    model, (model_inputs(b["image"], spec, True) for b in batches(train, 64)), device=self.cfg.device)
            model.set_classnames(names)
        return self._mean_bias[key]

    def trace_inputs(self, dataset: str, seed: int, split: str, method: str = "maple") -> Any:
        """What the trace step of (dataset, seed, split, method) traces, built: model, test images, options.

        The one place that builds them, for the one-process trace and for every worker of a cluster
        (:class:`ReproduceTraceSpec`). MaPLe: with and without prompts and every route ablation, β vectors;
        bias tuning: variant ``full`` and its b vectors (to compare with MaPLe's β).
        """
        from mmlens.data.transforms import input_spec
        from mmlens.models.precision import resolve_precision
        from mmlens.tracing.spec import BuiltTrace

        cfg = self.cfg
        src = self.source(dataset)
        test = src.test(split, size=self.size, normalize=input_spec(self.clip), max_images=cfg.max_images)
        model = self.model(dataset, seed, method, test.classnames)
        options: dict[str, Any] = {"variants": ["full"], "store_bias_vectors": True, "batch_size": 32,
                                   "device": cfg.device, "image_split": split,
                                   "class_split": [split] * len(test.classnames)}
        if method == "maple":
            options["mean_bias"] = self.mean_bias(dataset, seed, model)
            model.set_classnames(test.classnames)
            options["variants"] = list(schema.VARIANTS)  # full, zeroshot and the route ablations
        provenance = {"dataset": dataset, "manifest_version": str(src.manifest.manifest_version), "seed": seed,
                      "order": "sequential"}
        # MaPLe traces under autocast as in training and evaluation, on the run's own device (the statistics
        # stay float32); the bias-tuning trace runs as it always did, in the weights' precision
        precision = resolve_precision(cfg.precision if method == "maple" else "fp32", cfg.device)
        spec = ReproduceTraceSpec(dataset=dataset, data_root=str(cfg.data_root or ""), seed=seed, split=split,
                                  subset=split, device=cfg.device, batch_size=32, method=method, config=cfg)
        return BuiltTrace(spec, model, test, list(test.items), provenance, options, precision)

    def _trace(self, dataset: str, seed: int, split: str, method: str) -> dict[str, Any]:
        from mmlens.store.integrity import store_status
        from mmlens.tracing.tracer import trace_to_store

        path = self.store_path(dataset, seed, split, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.client is not None:
            spec = ReproduceTraceSpec(dataset=dataset, data_root=str(self.cfg.data_root or ""), seed=seed,
                                      split=split, subset=split, device=self.cfg.device, batch_size=32,
                                      method=method, config=self.cfg)
            trace_to_store(spec, path, client=self.client, progress=self.cfg.progress)
            status = store_status(path)
            return {"store": str(path), "images": status.n_images + status.n_failures}
        built = self.trace_inputs(dataset, seed, split, method)
        options = dict(built.options)
        with built.precision.autocast():
            trace_to_store(built.model, built.dataset, path, variants=options.pop("variants"),
                           batch_size=options.pop("batch_size"), progress=self.cfg.progress,
                           provenance=built.provenance, **options)
        return {"store": str(path), "images": len(built.dataset)}

    def trace(self, dataset: str, seed: int, split: str) -> dict[str, Any]:
        return self._trace(dataset, seed, split, "maple")

    def trace_bias(self, dataset: str, seed: int, split: str = "base") -> dict[str, Any]:
        """Trace bias tuning (variant ``full``, its b vectors) to compare its b with MaPLe's β side by side."""
        return self._trace(dataset, seed, split, "bias")

    def lens_path(self, dataset: str, seed: int) -> Path:
        return self.out / "results" / "lens" / f"{dataset}_seed{seed}.nc"

    def lens(self, dataset: str, seed: int) -> dict[str, Any]:
        """The text lens of MaPLe's prompts (docs/lens.md) on the base classes' test images: one pass, no ablation."""
        from mmlens.data.transforms import input_spec
        from mmlens.models.precision import resolve_precision
        from mmlens.tracing.lens import lens, other_classnames

        cfg = self.cfg
        src = self.source(dataset)
        test = src.test("base", size=self.size, normalize=input_spec(self.clip), max_images=cfg.max_images)
        model = self.model(dataset, seed, "maple", test.classnames)
        manifest = src.manifest
        with resolve_precision(cfg.precision, cfg.device).autocast():  # as the trace; the lens itself is float32
            ds = lens(model, test, other_classnames=other_classnames(manifest.name), seed=seed, device=cfg.device,
                      progress=cfg.progress, provenance={"dataset": dataset, "seed": seed, "split": "base",
                                                         "manifest_version": str(manifest.manifest_version)})
        path = self.lens_path(dataset, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_netcdf(ds, path)
        return {"lens": str(path), "images": int(ds.attrs["n_images"])}


@dataclass(frozen=True)
class ReproduceTraceSpec(TraceSpec):
    """A trace step of ``mmlens reproduce`` as a spec, for the workers of a cluster (``--workers``/``--scheduler``).

    Each worker builds it the way the one-process step does (:meth:`_Runner.trace_inputs`): the prompts
    learned in the output folder (a shared filesystem), the test images, the dataset-mean β.
    """

    config: Any = None

    def build(self, *, quiet: bool = False) -> Any:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            built = _Runner(self.config).trace_inputs(self.dataset, self.seed, self.split, self.method)
        built.spec = self
        return built


def _write_netcdf(ds: Any, path: Path) -> None:
    """Write a small Dataset as netCDF atomically; strings as variable-length (h5netcdf rejects fixed-width)."""
    import numpy as np

    ds = ds.copy()
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object)
    ds.attrs = {k: (v if isinstance(v, (int, float)) else str(v)) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {k: (v if isinstance(v, (int, float, np.number)) else str(v))
                          for k, v in ds[name].attrs.items()}
    tmp = path.with_name(path.name + ".tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def run(cfg: Config) -> Result:
    """Run (or resume) the pipeline; return the outputs and a summary.

    Examples
    --------
    >>> from mmlens.experiments._pipeline import Config, run                      # doctest: +SKIP
    >>> result = run(Config(out="repro", datasets=["ToySketch"], seeds=[1]))       # doctest: +SKIP
    >>> print(result.summary)                                                      # doctest: +SKIP
    """
    import torch

    started = time.perf_counter()
    out = Path(cfg.out)
    if cfg.restart:
        for name in (*SUBFOLDERS, "steps.json", "report.html", "explorer.html", "findings.md"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, cfg.settings())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runner = _Runner(cfg)
    files = layout(out)
    cluster = contextlib.nullcontext()
    if cfg.workers is not None or cfg.scheduler is not None:
        from mmlens.tracing.distributed import cluster_client

        cluster = cluster_client(workers=cfg.workers, scheduler=cfg.scheduler, device=cfg.device)

    per_run: list[tuple[str, Any]] = []
    for dataset in cfg.datasets:
        for seed in cfg.seeds:
            for method in cfg.methods:
                per_run.append((f"prompts/{dataset}/seed{seed}/{method}",
                                lambda d=dataset, s=seed, m=method: runner.prompts(d, s, m)))
                per_run.append((f"evaluate/{dataset}/seed{seed}/{method}",
                                lambda d=dataset, s=seed, m=method: runner.evaluate(d, s, m)))
            if "maple" in cfg.methods:
                for split in ("base", "novel"):
                    per_run.append((f"trace/{dataset}/seed{seed}/{split}",
                                    lambda d=dataset, s=seed, p=split: runner.trace(d, s, p)))
                per_run.append((f"lens/{dataset}/seed{seed}", lambda d=dataset, s=seed: runner.lens(d, s)))
                if "bias" in cfg.methods:  # b next to MaPLe's β (base classes, where both were trained)
                    per_run.append((f"trace/{dataset}/seed{seed}/bias_base",
                                    lambda d=dataset, s=seed: runner.trace_bias(d, s)))
    runs_key = {"datasets": cfg.datasets, "seeds": cfg.seeds, "methods": cfg.methods, "ablations": cfg.ablations,
                "n_boot": cfg.n_boot}
    study_steps: list[tuple[str, Any]] = [
        ("tables", lambda: _tables(runner, files)),
        ("statistics", lambda: _statistics(runner, files)),
        ("figures", lambda: _figures(runner, files)),
        ("findings", lambda: _findings(runner, files, ledger, started)),
        ("report", lambda: _report(runner, files)),
    ]
    if cfg.explorer and "maple" in cfg.methods:
        study_steps.append(("explorer", lambda: _explorer(runner, files)))

    total = len(per_run) + len(study_steps)
    stack = contextlib.ExitStack()
    per_run_names = {name for name, _ in per_run}
    try:
        runner.client = stack.enter_context(cluster)
        for i, (name, fn) in enumerate(per_run + study_steps, 1):
            study_wide = i > len(per_run)
            inputs = runs_key if study_wide else None
            # a per-run step that ran in this call may have changed its outputs: redo every study-wide step
            fresh = study_wide and any(s in per_run_names for s in runner.steps_run)
            if not fresh and ledger.done(name, inputs):
                runner.steps_skipped.append(name)
                print(f"[{i}/{total}] {name}: done before, skipped")
                continue
            print(f"[{i}/{total}] {name} ...", flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            info = dict(fn() or {})
            seconds = time.perf_counter() - t0
            info["cpu_seconds"] = round(time.process_time() - c0, 2)
            ledger.finish(name, seconds=seconds, inputs=inputs,
                          outputs={k: v for k, v in info.items() if isinstance(v, str)}, info=info)
            runner.steps_run.append(name)
            print(f"[{i}/{total}] {name}: done in {_fmt_seconds(seconds)}", flush=True)
    finally:
        stack.close()
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    headline = json.loads(files["findings"].with_suffix(".json").read_text()).get("headline", []) \
        if files["findings"].with_suffix(".json").is_file() else []
    summary = _summary(cfg, files, seconds, runner, headline, ledger)
    return Result(out=out, files=files, seconds=seconds, steps_run=runner.steps_run,
                  steps_skipped=runner.steps_skipped, headline=headline, summary=summary)


# ---------------------------------------------------------------------------------------------- study-wide steps
def _evaluations(runner: _Runner) -> Any:
    import xarray as xr

    from mmlens.stats.tables import combine_results

    cfg = runner.cfg
    parts = []
    for d in cfg.datasets:
        for s in cfg.seeds:
            for m in cfg.methods:
                with xr.open_dataset(runner.eval_path(d, s, m), engine="h5netcdf") as ds:
                    parts.append(ds.load())
    return combine_results(parts)


def _tables(runner: _Runner, files: dict[str, Path]) -> dict[str, Any]:
    from mmlens.stats.tables import to_csv, to_markdown

    acc = _evaluations(runner)
    files["accuracy_nc"].parent.mkdir(parents=True, exist_ok=True)
    _write_netcdf(acc, files["accuracy_nc"])
    to_csv(acc, files["accuracy_csv"])
    lines = ["# Accuracy (%): base / novel / HM, mean over seeds", "",
             f"Datasets: {', '.join(runner.cfg.datasets)}; seeds {runner.cfg.seeds}. Variants are route "
             "ablations (docs/math.md): `route[:branch[:layers]]`.", ""]
    for method in [str(m) for m in acc["method"].values]:
        lines += [f"## {method}", "", to_markdown(acc.sel({"method": [method]})), ""]
    files["accuracy_md"].write_text("\n".join(lines))
    return {"accuracy_md": str(files["accuracy_md"]), "accuracy_csv": str(files["accuracy_csv"])}


def _studies(runner: _Runner) -> dict[str, Any]:
    from mmlens.store.study import combine_runs

    cfg = runner.cfg
    return {split: combine_runs({(d, s): runner.store_path(d, s, split) for d in cfg.datasets for s in cfg.seeds})
            for split in ("base", "novel")}


def _bias_study(runner: _Runner) -> Any:
    """The bias-tuning traces (base classes) as one study, or None when bias tuning was not trained."""
    from mmlens.store.study import combine_runs

    cfg = runner.cfg
    if not ("bias" in cfg.methods and "maple" in cfg.methods):
        return None
    return combine_runs({(d, s): runner.store_path(d, s, "base", "bias") for d in cfg.datasets for s in cfg.seeds})


def _statistics(runner: _Runner, files: dict[str, Path]) -> dict[str, Any]:
    import warnings

    import pandas as pd

    from mmlens.experiments._analysis import COLUMNS, bias_comparison, method_comparison, study_statistics
    from mmlens.store.io import IncompleteStoreWarning

    cfg = runner.cfg
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if "maple" in cfg.methods:
        with warnings.catch_warnings():
            warnings.simplefilter("error", IncompleteStoreWarning)  # every store must be complete here
            studies = _studies(runner)
            bias_study = _bias_study(runner)
        for split, study in studies.items():
            r, n = study_statistics(study, split, n_boot=cfg.n_boot)
            rows += r
            notes += [x for x in n if x not in notes]
        if bias_study is not None:
            r, n = bias_comparison(studies["base"], bias_study, "base", n_boot=cfg.n_boot)
            rows += r
            notes += [x for x in n if x not in notes]
    if "bias" in cfg.methods and "maple" in cfg.methods:
        rows += method_comparison(_evaluations(runner), "bias", "maple", n_boot=cfg.n_boot)
    table = pd.DataFrame(rows, columns=COLUMNS)
    files["statistics_csv"].parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(files["statistics_csv"], index=False, float_format="%.6g")
    files["statistics_md"].write_text(_statistics_markdown(table, notes))
    (files["statistics_csv"].with_name("statistics_notes.json")).write_text(json.dumps(notes, indent=1))
    return {"statistics_csv": str(files["statistics_csv"]), "rows": len(table), "notes": notes}


def _statistics_markdown(table: Any, notes: list[str]) -> str:
    """The pooled rows by layer kind, one table per statistic (the CSV has per-dataset and per-layer rows)."""
    lines = ["# Statistics (pooled over datasets; mean [95% interval])", "",
             "Rows by layer kind (injected / carried layers apart, docs/math.md consequence 2). Per-dataset and "
             "per-layer rows are in `statistics.csv`.", ""]
    pooled = table[(table["dataset"] == "all") & (~table["layers"].str.fullmatch(r"\d+"))]
    for statistic, part in pooled.groupby("statistic", sort=False):
        lines += [f"## {statistic}", "", "| tower | method | split | variant | measure | layers | mean [95% CI] |",
                  "|---|---|---|---|---|---|---|"]
        for rec in part.to_dict("records"):
            lines.append(f"| {rec['tower']} | {rec.get('method', 'maple')} | {rec['split']} | {rec['variant']} | "
                         f"{rec['measure']} | "
                         f"{rec['layers'] or '–'} | {_ci(rec)} |")
        lines.append("")
    if notes:
        lines += ["## Not computed", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _ci(rec: dict[str, Any], digits: int = 3) -> str:
    import math

    if rec["mean"] is None or math.isnan(rec["mean"]):
        return "–"
    if math.isnan(rec["low"]) or rec["low"] == rec["high"] == rec["mean"]:
        return f"{rec['mean']:.{digits}f}"
    return f"{rec['mean']:.{digits}f} [{rec['low']:.{digits}f}, {rec['high']:.{digits}f}]"


def _figures(runner: _Runner, files: dict[str, Path]) -> dict[str, Any]:
    import pandas as pd
    import xarray as xr

    from mmlens.experiments._figures import all_figures

    table = pd.read_csv(files["statistics_csv"], keep_default_na=True, dtype={"layers": str})
    with xr.open_dataset(files["accuracy_nc"], engine="h5netcdf") as acc:
        acc = acc.load()
    written = all_figures(table, acc, files["figures"])
    return {"figures": [str(p) for p in written]}


def _context(runner: _Runner, ledger: Ledger, started: float) -> dict[str, Any]:
    import mmlens
    from mmlens.experiments._findings import find_results_table

    cfg = runner.cfg
    seconds = sum(float(e.get("seconds", 0)) for e in ledger.steps.values())
    cpu = sum(float((e.get("info") or {}).get("cpu_seconds", 0)) for e in ledger.steps.values())
    return {
        "model": cfg.model, "pretrained": cfg.pretrained or "random weights", "datasets": cfg.datasets,
        "seeds": cfg.seeds, "methods": cfg.methods, "shots": cfg.shots, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "depth": runner.depth(),
        "crop_scale": list(cfg.crop_scale), "max_images": cfg.max_images,
        "imported": bool(cfg.maple_weights), "data": cfg.data_root or f"toyworld generated in memory ({cfg.toy_size})",
        "quick": cfg.quick, "device": cfg.device, "mmlens_version": mmlens.__version__,
        "compute_seconds": seconds, "cpu_seconds": cpu, "threads": cfg.threads, "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d"), "n_boot": cfg.n_boot,
        "command": _command(cfg),
        "bias_tuning_table": find_results_table(Path(mmlens.__file__).resolve().parent.parent, "bias"),
    }


def _command(cfg: Config) -> str:
    parts = ["mmlens reproduce", f"--out {cfg.out}"]
    if cfg.quick:
        parts.append("--quick")
    if cfg.data_root:
        parts.append(f"--data-root {cfg.data_root}")
    if cfg.model != "mmlens-toy":
        parts.append(f"--model {cfg.model}")
    parts.append(f"--pretrained {cfg.pretrained or 'random'}")
    if cfg.quick_gelu:
        parts.append("--quick-gelu")
    if cfg.maple_weights:
        parts.append(f"--maple-weights {cfg.maple_weights}")
    parts.append("--datasets " + " ".join(cfg.datasets))
    parts.append("--seeds " + " ".join(map(str, cfg.seeds)))
    if cfg.methods != ["maple", "bias"] and not cfg.maple_weights:
        parts.append("--methods " + " ".join(cfg.methods))
    return " ".join(parts)


def _findings(runner: _Runner, files: dict[str, Path], ledger: Ledger, started: float) -> dict[str, Any]:
    import pandas as pd
    import xarray as xr

    from mmlens.experiments._findings import evaluate_claims, findings_markdown, sanity_checks

    table = pd.read_csv(files["statistics_csv"], dtype={"layers": str})
    with xr.open_dataset(files["accuracy_nc"], engine="h5netcdf") as acc:
        acc = acc.load()
    context = _context(runner, ledger, started)
    claims = evaluate_claims(table, acc, context)
    checks = sanity_checks(table)
    # the lens of each dataset's first seed ("What the prompts learn"); runs made before the lens step have none
    lenses = {}
    for dataset in runner.cfg.datasets:
        path = runner.lens_path(dataset, runner.cfg.seeds[0])
        if path.is_file():
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                lenses[dataset] = ds.load()
    text = findings_markdown(claims, context, table, checks, lenses=lenses)
    files["findings"].write_text(text)
    headline = [c.headline for c in claims]
    files["findings"].with_suffix(".json").write_text(json.dumps(
        {"context": context, "headline": headline, "claims": [asdict(c) for c in claims],
         "checks": [asdict(k) for k in checks]}, indent=1, default=str))
    return {"findings": str(files["findings"]), "verdicts": {c.key: c.verdict for c in claims},
            "checks": {k.title: k.status for k in checks}}


def _report(runner: _Runner, files: dict[str, Path]) -> dict[str, Any]:
    from mmlens.experiments._html import write_html_report

    path = write_html_report(files, title="mmlens reproduce — " + ", ".join(runner.cfg.datasets))
    return {"report": str(path)}


def _explorer(runner: _Runner, files: dict[str, Path]) -> dict[str, Any]:
    """The viz colleague's interactive standalone page, on the base-split study (full vs zero-shot)."""
    import xarray as xr

    from mmlens.viz.report import write_report

    full = _studies(runner)["base"]
    groups = {name: full[name].to_dataset().sel(variant=["full", "zeroshot"])
              for name in ("vision", "text", "logits") if name in full.children}
    study = xr.DataTree.from_dict({"/": xr.Dataset(attrs=dict(full.attrs)), **groups})
    path = write_report(study, files["explorer"], title="mmlens reproduce: explorer (base classes)", images=2,
                        max_datasets=len(runner.cfg.datasets), fg_max_images=64)
    return {"explorer": str(path)}


def _summary(cfg: Config, files: dict[str, Path], seconds: float, runner: _Runner, headline: list[str],
             ledger: Ledger) -> str:
    compute = sum(float(e.get("seconds", 0)) for e in ledger.steps.values())
    lines = ["", "=" * 78,
             f"mmlens reproduce — {len(cfg.datasets)} dataset(s) × {len(cfg.seeds)} seed(s), {cfg.model} "
             f"({cfg.pretrained or 'random weights'})",
             f"this call: {_fmt_seconds(seconds)}; {len(runner.steps_run)} step(s) run, "
             f"{len(runner.steps_skipped)} skipped (done before); all steps together: {_fmt_seconds(compute)}",
             ""]
    if headline:
        lines += ["Findings:"] + [f"  {h}" for h in headline] + [""]
    lines += [f"folder:    {Path(cfg.out)}",
              f"findings:  {files['findings']}",
              f"report:    {files['report']}  (standalone HTML)"]
    if files["explorer"].is_file():
        lines.append(f"explorer:  {files['explorer']}")
    lines += [f"tables:    {files['accuracy_md']}, {files['statistics_md']} (+ .csv)",
              f"figures:   {files['figures']}/",
              f"stores:    {Path(cfg.out) / 'stores'}/<dataset>/seed<k>/<base|novel>.zarr (mmlens.open)",
              "=" * 78]
    return "\n".join(lines)
