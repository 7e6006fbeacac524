"""toyworld: generated scenes with exact masks and controlled domain shifts (the embedded default world).

>>> from mmlens.data import toyworld
>>> sorted(toyworld.DOMAINS)[:3]
['clutter', 'finegrained', 'lowlight']
"""

from __future__ import annotations

from mmlens.data.toyworld.dataset import ToyworldDataset, build_in_memory
from mmlens.data.toyworld.domains import DOMAINS, DOWNSTREAM, Domain, ToyClass, get_domain, noun_phrase
from mmlens.data.toyworld.generate import (
    SIZES,
    Generated,
    PretrainBatch,
    caption_batch,
    caption_match,
    generate,
    make_captions,
    pretraining_batch,
)

__all__ = [
    "DOMAINS",
    "DOWNSTREAM",
    "SIZES",
    "Domain",
    "Generated",
    "PretrainBatch",
    "ToyClass",
    "ToyworldDataset",
    "build_in_memory",
    "caption_batch",
    "caption_match",
    "generate",
    "get_domain",
    "make_captions",
    "noun_phrase",
    "pretraining_batch",
]
