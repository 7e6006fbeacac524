"""Dataset manifests, CoOp-layout loaders, the few-shot and base/novel protocol; toyworld.

Names load lazily (PEP 562) so that ``import mmlens.data`` and ``mmlens data list`` do not import torch.

>>> import mmlens.data as mdata
>>> mdata.get_manifest("eurosat").num_classes
10
"""

from __future__ import annotations

from mmlens._lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "Manifest": "mmlens.data.manifest",
    "ManifestError": "mmlens.data.manifest",
    "get_manifest": "mmlens.data.manifest",
    "list_manifests": "mmlens.data.manifest",
    "load_manifest": "mmlens.data.manifest",
    "validate_manifest": "mmlens.data.manifest",
    "manifest_dir": "mmlens.data.manifest",
    "Item": "mmlens.data.loaders",
    "SplitData": "mmlens.data.loaders",
    "SplitFileError": "mmlens.data.loaders",
    "load_split": "mmlens.data.loaders",
    "few_shot": "mmlens.data.protocol",
    "base_novel": "mmlens.data.protocol",
    "base_to_novel_datasets": "mmlens.data.protocol",
    "cross_dataset_source": "mmlens.data.protocol",
    "cross_dataset_targets": "mmlens.data.protocol",
    "domain_generalisation_targets": "mmlens.data.protocol",
    "ImageDataset": "mmlens.data.dataset",
    "ImageDecodeError": "mmlens.data.dataset",
    "collate": "mmlens.data.dataset",
    "build": "mmlens.data.dataset",
    "decode_image": "mmlens.data.dataset",
    "decode_item": "mmlens.data.dataset",
    "decode_mask": "mmlens.data.dataset",
    "MaskSizeError": "mmlens.data.dataset",
    "verify": "mmlens.data.verification",
    "VerifyReport": "mmlens.data.verification",
    "make_fake_tree": "mmlens.data.fake",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports("mmlens.data", _LAZY, globals())
