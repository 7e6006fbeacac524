"""The one place where viz runs a model: trace a single image on demand, to explore it like a store."""

from __future__ import annotations

from typing import Any

__all__ = ["trace_image"]


def trace_image(
    model: Any,
    image: Any,
    *,
    mask: Any = None,
    label: int | None = None,
    path: str | None = None,
    with_reference: bool = True,
    provenance: dict | None = None,
):
    """Trace one image with (and without) the prompts; the result opens in :func:`mmlens.explore`.

    A thin wrapper of :func:`mmlens.trace` for a batch of one: everything else in ``mmlens.viz``
    reads stores and never runs a model.

    Parameters
    ----------
    model
        A :class:`~mmlens.PromptedCLIP`.
    image
        One preprocessed image ``[3, H, W]`` (or ``[1, 3, H, W]``), as the model expects it.
    mask
        Optional foreground mask ``[H, W]`` (values in [0, 1]) for foreground attention.
    label
        Optional true class index (for the accuracy table and titles).
    path
        Optional name of the image (kept in the ``path`` coordinate).
    with_reference
        Also trace without prompts (variant ``zeroshot``).
    provenance
        Extra provenance attrs (``dataset``, ``seed``, ...).

    Returns
    -------
    xarray.DataTree
        A one-image trace tree (docs/store_schema.md).

    Examples
    --------
    >>> tree = trace_image(model, test[0]["image"], mask=test[0]["mask"], label=test[0]["label"])  # doctest: +SKIP
    >>> mmlens.explore(tree)                                                                       # doctest: +SKIP
    """
    import torch

    import mmlens

    images = torch.as_tensor(image)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] != 1:
        raise ValueError(f"expected one image [3, H, W] or [1, 3, H, W], found shape {tuple(images.shape)}; "
                         "trace several images with mmlens.trace or mmlens.trace_to_store")
    batch: dict[str, Any] = {"image": images}
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.float32)
        batch["mask"] = m.reshape(1, *m.shape[-2:])
    if label is not None:
        batch["label"] = torch.tensor([int(label)])
        batch["classname"] = [model.classnames[int(label)]] if hasattr(model, "classnames") else None
        if batch["classname"] is None:
            del batch["classname"]
    if path is not None:
        batch["path"] = [str(path)]
    return mmlens.trace(model, [batch], with_reference=with_reference, provenance=provenance, progress=False)
