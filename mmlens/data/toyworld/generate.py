"""Seeded generation of toyworld images, masks and labels, and of captioned pre-training batches.

Every batch is drawn from its own RNG stream keyed by ``(seed, domain, split, chunk)``; the same
arguments always give identical bytes, and splits (and pre-training) never share a stream.

>>> from mmlens.data.toyworld import generate
>>> g = generate("sketch", n_per_class=1, seed=0, split="test")
>>> g.images.shape, g.masks.dtype, len(g.classnames)
((48, 64, 64, 3), dtype('bool'), 48)
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from mmlens.data.toyworld import render as R
from mmlens.data.toyworld.domains import HUES, Domain, get_domain, noun_phrase, photo_scene

CHUNK = 256
SPLITS = ("train", "val", "test")

#: Images per class and split: ``small`` for tests and the demo, ``full`` for the results table.
SIZES: dict[str, dict[str, int]] = {
    "small": {"train": 16, "val": 4, "test": 8},
    "full": {"train": 32, "val": 8, "test": 40},
}


def stream(seed: int, *keys: str) -> np.random.Generator:
    """The RNG of one stream: ``SeedSequence([seed, crc32(key) ...])`` (stable across runs and platforms).

    Examples
    --------
    >>> float(stream(0, "a").random()) == float(stream(0, "a").random())
    True
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    words = [zlib.crc32(k.encode("utf-8")) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


class Generated(NamedTuple):
    """Output of :func:`generate`: ``images`` uint8 [N,64,64,3], ``masks`` bool [N,64,64], ``labels`` int64 [N],
    ``classnames`` (indexed by label)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    classnames: list[str]


def generate(domain: str | Domain, n_per_class: int, seed: int = 0, split: str = "train") -> Generated:
    """Render ``n_per_class`` images of every class of ``domain`` (label-major order), with exact masks.

    Parameters
    ----------
    domain
        Domain key (``"photo"``, ``"satellite"``, ``"sketch"``, ``"texture"``, ``"lowlight"``,
        ``"finegrained"``, ``"clutter"``) or dataset name (``"ToySketch"``).
    n_per_class
        Images per class.
    seed
        Data seed; with ``split`` it selects the RNG streams.
    split
        ``"train"``, ``"val"`` or ``"test"`` (independent streams).

    Returns
    -------
    Generated
        ``(images, masks, labels, classnames)``; ``masks[i]`` is exactly the set of pixels the class
        object was drawn on (its silhouette).

    Examples
    --------
    >>> a = generate("photo", 1, seed=3, split="val")
    >>> b = generate("photo", 1, seed=3, split="val")
    >>> a.images.tobytes() == b.images.tobytes(), a.classnames[a.labels[5]]
    (True, 'blue heart')
    """
    d = get_domain(domain)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = np.repeat(np.arange(d.num_classes, dtype=np.int64), int(n_per_class))
    images = np.empty((len(labels), R.IMAGE_SIZE, R.IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.empty((len(labels), R.IMAGE_SIZE, R.IMAGE_SIZE), dtype=bool)
    for c, start in enumerate(range(0, len(labels), CHUNK)):
        sl = slice(start, start + CHUNK)
        rng = stream(seed, "toyworld", d.key, split, str(c))
        images[sl], masks[sl] = d.render(labels[sl], rng)
    return Generated(images, masks, labels, d.classnames)


# ----------------------------------------------------------------------------------------------------------
# Captions for pre-training

_PATTERN_NOUNS = {
    "striped": "stripes", "dotted": "dots", "checkered": "checks", "zigzag": "zigzags", "wavy": "waves"
}
_TEMPLATES = (
    ("a photo of a {}.", 8), ("a {}.", 3), ("a picture of a {}.", 2), ("an image of a {}.", 2),
    ("a photo of the {}.", 2), ("itap of a {}.", 1), ("a close up photo of a {}.", 1),
    ("there is a {} in this photo.", 1), ("a photo showing a {}.", 1), ("{}.", 1),
    ("a good photo of a {}.", 1), ("a photo of a {}, a type of shape.", 1),
)
_TEMPLATE_P = np.array([w for _, w in _TEMPLATES], dtype=np.float64) / sum(w for _, w in _TEMPLATES)
#: Attributes a caption may mention; an image matches a caption when it agrees on every mentioned one.
CAPTION_ATTRIBUTES = ("colour", "shape", "pattern", "size", "background", "position")


def _size_word(radius: np.ndarray) -> np.ndarray:
    return np.where(radius < 19.0, "small", np.where(radius > 23.0, "large", ""))


def _position_word(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    out = np.full(cx.shape, "", dtype=object)
    out[cy > 40] = "bottom"
    out[cy < 24] = "top"
    out[cx > 40] = "right"
    out[cx < 24] = "left"
    out[(np.abs(cx - 32) < 6) & (np.abs(cy - 32) < 6)] = "center"
    return out.astype(str)


def make_captions(
    attrs: dict[str, np.ndarray], rng: np.random.Generator, shape_only: float = 0.0
) -> tuple[list[str], dict]:
    """One templated caption per image and what each caption mentions (``""`` = not mentioned).

    The shape is always named, the colour too except in a fraction ``shape_only`` of the captions;
    pattern (half the time), size, background and position sometimes.

    Examples
    --------
    >>> attrs = {"colour": np.array(["red"]), "shape": np.array(["star"]), "pattern": np.array(["plain"]),
    ...          "radius": np.array([13.0]), "cx": np.array([32.0]), "cy": np.array([32.0]),
    ...          "background": np.array(["gray"])}
    >>> caps, mentioned = make_captions(attrs, np.random.default_rng(0))
    >>> "red" in caps[0] and "star" in caps[0], str(mentioned["colour"][0])
    (True, 'red')
    """
    n = len(attrs["shape"])
    size = _size_word(np.asarray(attrs["radius"]))
    pos = _position_word(np.asarray(attrs["cx"]), np.asarray(attrs["cy"]))
    u = rng.random((6, n))
    tmpl = rng.choice(len(_TEMPLATES), size=n, p=_TEMPLATE_P)
    mention = {k: np.full(n, "", dtype=object) for k in CAPTION_ATTRIBUTES}
    captions = []
    for i in range(n):
        colour, shape, pattern = str(attrs["colour"][i]), str(attrs["shape"][i]), str(attrs["pattern"][i])
        if u[5, i] < shape_only:  # "a photo of a star.": matches every star in the batch, whatever its colour
            colour = ""
        mention["colour"][i], mention["shape"][i] = colour, shape
        say_pattern = u[0, i] < 0.5
        as_clause = say_pattern and pattern != "plain" and u[1, i] < 0.4
        phrase = noun_phrase(colour, shape, pattern if say_pattern and not as_clause else None)
        if size[i] and u[2, i] < 0.25:
            phrase = f"{size[i]} {phrase}"
            mention["size"][i] = size[i]
        if say_pattern:
            mention["pattern"][i] = pattern
        tail = ""
        if as_clause:
            tail += f" with {_PATTERN_NOUNS[pattern]}"
        if u[3, i] < 0.2:
            tail += f" on a {attrs['background'][i]} background"
            mention["background"][i] = str(attrs["background"][i])
        if pos[i] and u[4, i] < 0.15:
            tail += f" in the {pos[i]}"
            mention["position"][i] = pos[i]
        template = _TEMPLATES[int(tmpl[i])][0]
        text = template.format(phrase + tail) if template.endswith("{}.") else template.format(phrase)
        if tail and not template.endswith("{}."):
            text = text[:-1] + "," + tail + "."
        captions.append(text)
    return captions, {k: v.astype(str) for k, v in mention.items()}


def caption_match(image_attrs: dict[str, np.ndarray], mentioned: dict[str, np.ndarray]) -> np.ndarray:
    """``bool [N_images, N_captions]``: image i agrees with every attribute caption j mentions.

    Examples
    --------
    >>> img = {"colour": np.array(["red", "red"]), "shape": np.array(["star", "ring"])}
    >>> cap = {"colour": np.array(["red"]), "shape": np.array([""])}
    >>> caption_match(img, cap).tolist()
    [[True], [True]]
    """
    first = next(iter(image_attrs.values()))
    out = np.ones((len(first), len(next(iter(mentioned.values())))), dtype=bool)
    for k, said in mentioned.items():
        said = np.asarray(said)
        if k not in image_attrs:
            continue
        have = np.asarray(image_attrs[k]).astype(str)
        out &= (said[None, :] == "") | (have[:, None] == said[None, :])
    return out


class PretrainBatch(NamedTuple):
    """A captioned photo-domain batch: images uint8 [N,64,64,3], masks, per-image attributes, captions,
    what each caption mentions, and ``match`` bool [N, N] (image i fits caption j)."""

    images: np.ndarray
    masks: np.ndarray
    attrs: dict[str, np.ndarray]
    captions: list[str]
    mentioned: dict[str, np.ndarray]
    match: np.ndarray


def pretraining_batch(
    n: int,
    seed: int,
    step: int,
    neutral: float = 0.15,
    radius: tuple[float, float] = (16.0, 26.0),
    shape_only: float = 0.25,
) -> PretrainBatch:
    """Photo-domain images of random objects with templated captions, for contrastive pre-training.

    Colours are the eight hues plus, with probability ``neutral``, white / gray / black / brown; shapes
    uniform; patterns ``plain`` 50 %, the others 10 % each. The stream ``(seed, "pretrain", step)`` is
    disjoint from every dataset split. ``radius`` (px) is the object size range (the photo domain's by
    default; the recipe's warm-up phase uses larger objects). A fraction ``shape_only`` of the captions
    names the shape without the colour (``"a photo of a star."``), which makes shape alone worth
    learning: colour is learnt first and otherwise explains most of the loss.

    Examples
    --------
    >>> b = pretraining_batch(8, seed=0, step=0)
    >>> b.images.shape, len(b.captions), bool(b.match.diagonal().all())
    ((8, 64, 64, 3), 8, True)
    """
    rng = stream(seed, "toyworld", "pretrain", str(step))
    attrs = {
        "colour": np.array(HUES)[rng.integers(0, len(HUES), n)],
        "shape": np.array(R.SHAPES)[rng.integers(0, len(R.SHAPES), n)],
        "pattern": np.array(R.PATTERNS)[
            rng.choice(len(R.PATTERNS), size=n, p=[0.5] + [0.1] * (len(R.PATTERNS) - 1))
        ],
    }
    img, mask = photo_scene(rng, attrs, neutral=neutral, radius=radius)
    attrs["size"] = _size_word(attrs["radius"])
    attrs["position"] = _position_word(attrs["cx"], attrs["cy"])
    captions, mentioned = make_captions(attrs, rng, shape_only=shape_only)
    match = caption_match({k: attrs[k] for k in CAPTION_ATTRIBUTES}, mentioned)
    return PretrainBatch(R.to_uint8(img), mask, attrs, captions, mentioned, match)


def caption_batch(n: int, seed: int, step: int, shape_only: float = 0.25) -> tuple[list[str], dict]:
    """Captions of ``n`` random photo-domain objects, without rendering them (for text-only steps).

    Attributes are drawn as in :func:`pretraining_batch`; returns ``(captions, mentioned)``.

    Examples
    --------
    >>> caps, said = caption_batch(4, seed=0, step=0)
    >>> len(caps), sorted(said) == sorted(CAPTION_ATTRIBUTES)
    (4, True)
    """
    rng = stream(seed, "toyworld", "captions", str(step))
    colours = np.array(list(HUES) + list(R.NEUTRAL_COLOURS))
    attrs = {
        "colour": colours[rng.integers(0, len(colours), n)],
        "shape": np.array(R.SHAPES)[rng.integers(0, len(R.SHAPES), n)],
        "pattern": np.array(R.PATTERNS)[rng.integers(0, len(R.PATTERNS), n)],
        "radius": rng.uniform(16.0, 26.0, n),
        "cx": rng.uniform(17.0, 47.0, n),
        "cy": rng.uniform(17.0, 47.0, n),
        "background": np.array(list(R.PHOTO_BACKGROUNDS))[rng.integers(0, len(R.PHOTO_BACKGROUNDS), n)],
    }
    return make_captions(attrs, rng, shape_only=shape_only)
