"""Image-side captum attributions (pixel IG, patch-embedding IG, patch occlusion) on the ViT patch grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients

from mmlens.attribution._inputs import (
    ImageBatch,
    PatchGrid,
    as_image_batch,
    chunks,
    finish,
    grid_coords,
    image_coords,
    patch_grid,
    progress,
    resolve_target,
)
from mmlens.attribution.forward import ClassLogits

__all__ = [
    "PatchEmbeddingIntegratedGradients",
    "PatchOcclusion",
    "PixelIntegratedGradients",
    "patch_feature_mask",
    "pixels_to_patches",
]

_AGGREGATES = ("abs", "signed")


def pixels_to_patches(attr: torch.Tensor, grid: PatchGrid, aggregate: str = "abs") -> torch.Tensor:
    """Sum a pixel attribution ``[batch, channels, H, W]`` over each patch: ``[batch, rows, cols]``.

    ``aggregate="abs"`` sums ``|attr|`` over channels and the patch's pixels (a saliency mass);
    ``"signed"`` sums the signed values, so that the patches add up to the whole attribution
    (IG's completeness carries over to the patch map).

    Examples
    --------
    >>> from mmlens.attribution._inputs import PatchGrid
    >>> a = torch.ones(1, 3, 4, 4); a[0, 0, 0, 0] = -1
    >>> pixels_to_patches(a, PatchGrid(2, 2, 2, 2), "signed")[0].tolist()
    [[10.0, 12.0], [12.0, 12.0]]
    """
    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, found {aggregate!r}.")
    a = attr.abs() if aggregate == "abs" else attr
    b, c = a.shape[:2]
    return a.reshape(b, c, grid.rows, grid.patch_h, grid.cols, grid.patch_w).sum(dim=(1, 3, 5))


def patch_feature_mask(grid: PatchGrid, device: torch.device | str | None = None) -> torch.Tensor:
    """captum feature mask with one feature per ViT patch: ``LongTensor[1, 1, H, W]``, ids in row-major grid order.

    Examples
    --------
    >>> from mmlens.attribution._inputs import PatchGrid
    >>> patch_feature_mask(PatchGrid(2, 2, 1, 2))[0, 0].tolist()
    [[0, 0, 1, 1], [2, 2, 3, 3]]
    """
    ids = torch.arange(grid.rows * grid.cols, device=device).reshape(grid.rows, grid.cols)
    mask = ids.repeat_interleave(grid.patch_h, dim=0).repeat_interleave(grid.patch_w, dim=1)
    return mask[None, None]


class _ImageAttribution:
    """Common set-up: batch, targets, fixed text features, patch grid, device."""

    name = "attribution"

    def __init__(self, model: Any, *, progress: bool = True) -> None:
        if not hasattr(model, "clip") or not hasattr(model, "text_features"):
            raise TypeError(f"Expected a mmlens PromptedCLIP, found {type(model).__name__}; wrap an open_clip model "
                            "with mmlens.PromptedCLIP(load_clip(...), classnames, method='zeroshot').")
        self.model = model
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.model.clip.visual.conv1.weight.device

    def _setup(self, images: Any, target: Any, labels: Any, paths: Any, classnames: Any
               ) -> tuple[ImageBatch, torch.Tensor, ClassLogits, PatchGrid]:
        batch = as_image_batch(images, labels=labels, paths=paths, classnames=classnames, model=self.model)
        batch.images = batch.images.to(self.device)
        with torch.no_grad():
            text_features = self.model.text_features()
        forward = ClassLogits(self.model, text_features)
        tgt = resolve_target(target, batch, text_features.shape[0], self.model, text_features)
        return batch, tgt, forward, patch_grid(self.model, batch.images)

    def _baselines(self, baselines: Any, x: torch.Tensor, rows: slice) -> torch.Tensor:
        if baselines is None or (isinstance(baselines, str) and baselines == "zero"):
            return torch.zeros_like(x)
        if isinstance(baselines, (int, float)):
            return torch.full_like(x, float(baselines))
        if isinstance(baselines, torch.Tensor):
            b = baselines.to(x.device, x.dtype)
            if b.dim() == 4 and b.shape[0] != 1:  # one baseline per image: take this chunk's
                b = b[rows]
            return b.expand_as(x).contiguous()
        raise ValueError(f"baselines must be 'zero', a number or a tensor broadcastable to the images, found "
                         f"{type(baselines).__name__}.")


class PixelIntegratedGradients(_ImageAttribution):
    """Integrated gradients of the target logit w.r.t. the pixels, summed over each ViT patch.

    captum's :class:`~captum.attr.IntegratedGradients` on the preprocessed image; the pixel map is
    aggregated to the patch grid by :func:`pixels_to_patches`.

    Parameters
    ----------
    model : PromptedCLIP
        The model to explain (prompts on or off as set by ``model.prompts_enabled``).
    progress : bool
        Show a progress bar over image chunks.

    Examples
    --------
    >>> ig = PixelIntegratedGradients(model, progress=False)
    >>> maps = ig.attribute(images, target="label", labels=labels, n_steps=16)
    >>> maps.dims, maps.convergence_delta.dims
    (('image', 'patch_row', 'patch_col'), ('image',))
    """

    name = "ig_pixels"

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        baselines: Any = "zero",
        n_steps: int = 32,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        aggregate: str = "abs",
        batch_size: int | None = 8,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Attribute the target logit of every image to its patches.

        Parameters
        ----------
        images : Tensor or batch dict
            Preprocessed images ``[batch, 3, H, W]`` or a batch from ``mmlens.data.collate``.
        target : None, "label", "predicted", int, str or sequence
            Which logit to explain (default: the true class; see ``resolve_target``).
        baselines : "zero", float or Tensor
            IG baseline in the preprocessed space; ``"zero"`` (the default) is the dataset-mean colour
            under CLIP's normalisation.
        n_steps, method, internal_batch_size
            Passed to captum (``internal_batch_size`` bounds the rows per forward pass).
        aggregate : {"abs", "signed"}
            Per-patch aggregation (see :func:`pixels_to_patches`); ``"signed"`` keeps completeness.
        batch_size : int or None
            Images per captum call (the progress bar counts these chunks).
        labels, paths, classnames
            Image metadata (override the batch dict's).

        Returns
        -------
        xarray.DataArray
            ``(image, patch_row, patch_col)`` with coords ``label``/``classname``/``path`` when known,
            ``target``, ``logit``, ``baseline_logit`` and captum's ``convergence_delta`` per image.
        """
        batch, tgt, forward, grid = self._setup(images, target, labels, paths, classnames)
        ig = IntegratedGradients(forward)
        maps, deltas, logits, base_logits = [], [], [], []
        for rows in progress(chunks(len(batch), batch_size), enabled=self.progress, desc="IG (pixels)"):
            x = batch.images[rows]
            b = self._baselines(baselines, x, rows)
            t = tgt[rows].to(x.device)
            attr, delta = ig.attribute(x, baselines=b, target=t, n_steps=n_steps, method=method,
                                       internal_batch_size=internal_batch_size, return_convergence_delta=True)
            maps.append(pixels_to_patches(attr.detach(), grid, aggregate).cpu())
            deltas.append(delta.detach().cpu())
            with torch.no_grad():
                logits.append(forward(x, t).cpu())
                base_logits.append(forward(b, t).cpu())
        coords = {**image_coords(batch, tgt, self.model), **grid_coords(grid),
                  "convergence_delta": ("image", torch.cat(deltas).numpy()),
                  "logit": ("image", torch.cat(logits).numpy()),
                  "baseline_logit": ("image", torch.cat(base_logits).numpy())}
        return finish(torch.cat(maps).numpy(), ("image", "patch_row", "patch_col"), coords, name=self.name,
                      model=self.model,
                      attrs={"attribution_method": "IntegratedGradients on pixels (captum)", "n_steps": n_steps,
                             "integration_method": method, "aggregate": aggregate,
                             "baseline": baselines if isinstance(baselines, (str, int, float)) else "tensor"})


class PatchEmbeddingIntegratedGradients(_ImageAttribution):
    """Layer integrated gradients on the patch embedding (``visual.conv1``'s output tokens).

    captum's :class:`~captum.attr.LayerIntegratedGradients` with ``layer=model.clip.visual.conv1``;
    the baseline is the patch embedding of the baseline image. The ``[width, rows, cols]`` output is
    summed over the width per patch token.

    Examples
    --------
    >>> lig = PatchEmbeddingIntegratedGradients(model, progress=False)
    >>> lig.attribute(images, target=3, n_steps=16).dims
    ('image', 'patch_row', 'patch_col')
    """

    name = "ig_patch_embedding"

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        baselines: Any = "zero",
        n_steps: int = 32,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        aggregate: str = "abs",
        batch_size: int | None = 8,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Attribute the target logit to each patch token of the patch embedding.

        Parameters are those of :meth:`PixelIntegratedGradients.attribute`; ``aggregate`` here sums
        ``|attr|`` (``"abs"``) or the signed values (``"signed"``, completeness) over the embedding width.

        Returns
        -------
        xarray.DataArray
            ``(image, patch_row, patch_col)`` with ``convergence_delta``, ``logit``, ``baseline_logit``.
        """
        if aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {_AGGREGATES}, found {aggregate!r}.")
        batch, tgt, forward, grid = self._setup(images, target, labels, paths, classnames)
        lig = LayerIntegratedGradients(forward, self.model.clip.visual.conv1)
        maps, deltas, logits, base_logits = [], [], [], []
        for rows in progress(chunks(len(batch), batch_size), enabled=self.progress, desc="IG (patch embedding)"):
            x = batch.images[rows]
            b = self._baselines(baselines, x, rows)
            t = tgt[rows].to(x.device)
            attr, delta = lig.attribute(x, baselines=b, target=t, n_steps=n_steps, method=method,
                                        internal_batch_size=internal_batch_size, return_convergence_delta=True)
            attr = attr.detach()
            if attr.shape[-2:] != (grid.rows, grid.cols):
                raise RuntimeError(f"Expected the patch embedding on a {grid.rows}x{grid.cols} grid, found "
                                   f"{tuple(attr.shape)}.")
            maps.append((attr.abs() if aggregate == "abs" else attr).sum(dim=1).cpu())
            deltas.append(delta.detach().cpu())
            with torch.no_grad():
                logits.append(forward(x, t).cpu())
                base_logits.append(forward(b, t).cpu())
        coords = {**image_coords(batch, tgt, self.model), **grid_coords(grid),
                  "convergence_delta": ("image", torch.cat(deltas).numpy()),
                  "logit": ("image", torch.cat(logits).numpy()),
                  "baseline_logit": ("image", torch.cat(base_logits).numpy())}
        return finish(torch.cat(maps).numpy(), ("image", "patch_row", "patch_col"), coords, name=self.name,
                      model=self.model,
                      attrs={"attribution_method": "LayerIntegratedGradients on visual.conv1 (captum)",
                             "n_steps": n_steps, "integration_method": method, "aggregate": aggregate,
                             "baseline": baselines if isinstance(baselines, (str, int, float)) else "tensor"})


class PatchOcclusion(_ImageAttribution):
    """Occlusion of one ViT patch at a time: ``logit(x) - logit(x with the patch set to the baseline)``.

    captum's :class:`~captum.attr.FeatureAblation` with :func:`patch_feature_mask` (one feature per
    patch) — the same numbers as captum's ``Occlusion`` with a patch-sized window and stride.

    Examples
    --------
    >>> occ = PatchOcclusion(model, progress=False)
    >>> maps = occ.attribute(images, target="label", labels=labels)
    >>> maps.sizes["patch_row"] * maps.sizes["patch_col"] == model.clip.visual.grid_size[0] ** 2
    True
    """

    name = "occlusion"

    def attribute(
        self,
        images: torch.Tensor | Mapping[str, Any],
        target: Any = None,
        *,
        baselines: Any = "zero",
        internal_batch_size: int | None = None,
        batch_size: int | None = 8,
        labels: Sequence[int] | torch.Tensor | None = None,
        paths: Sequence[str] | None = None,
        classnames: Sequence[str] | None = None,
    ) -> xr.DataArray:
        """Occlude each patch and record the drop of the target logit.

        Parameters
        ----------
        baselines : "zero", float or Tensor
            The value an occluded patch takes (preprocessed space; ``"zero"`` = mean colour).
        internal_batch_size : int, optional
            Rows per forward pass: captum's ``perturbations_per_eval`` is
            ``max(1, internal_batch_size // images_in_chunk)`` (default 1 perturbation per pass).
        Other parameters as in :meth:`PixelIntegratedGradients.attribute`.

        Returns
        -------
        xarray.DataArray
            ``(image, patch_row, patch_col)``: positive where hiding the patch lowers the logit;
            coords ``logit`` and the image metadata.
        """
        batch, tgt, forward, grid = self._setup(images, target, labels, paths, classnames)
        ablation = FeatureAblation(forward)
        mask = patch_feature_mask(grid, self.device)
        maps, logits = [], []
        pieces = chunks(len(batch), batch_size)
        for rows in progress(pieces, enabled=self.progress, desc="Occlusion"):
            x = batch.images[rows]
            b = self._baselines(baselines, x, rows)
            t = tgt[rows].to(x.device)
            per_eval = max(1, int(internal_batch_size) // x.shape[0]) if internal_batch_size else 1
            attr = ablation.attribute(x, baselines=b, target=t, feature_mask=mask, perturbations_per_eval=per_eval,
                                      show_progress=self.progress and len(pieces) == 1)
            # every pixel of a patch carries the patch's value (one feature per patch): read its first pixel
            maps.append(attr.detach()[:, 0, ::grid.patch_h, ::grid.patch_w].cpu())
            with torch.no_grad():
                logits.append(forward(x, t).cpu())
        coords = {**image_coords(batch, tgt, self.model), **grid_coords(grid),
                  "logit": ("image", torch.cat(logits).numpy())}
        return finish(torch.cat(maps).numpy(), ("image", "patch_row", "patch_col"), coords, name=self.name,
                      model=self.model,
                      attrs={"attribution_method": "FeatureAblation with one feature per ViT patch (captum)",
                             "baseline": baselines if isinstance(baselines, (str, int, float)) else "tensor"})
