"""toyworld domains: the photo pre-training domain and six shifted downstream datasets, as scene renderers.

Each :class:`Domain` has its own class list (classes are attribute combinations named in words, e.g.
``"red star"``, ``"gray striped hexagon"``, ``"blue dotted"``) and a batched renderer that turns a
numpy RNG and per-image class attributes into ``float32 [N, 64, 64, 3]`` images and exact
``bool [N, 64, 64]`` object masks. Class lists are ordered so that the base half (the first
``n/2`` labels) and the novel half each contain every attribute value, in different combinations:
a domain-level shift learned on base classes can transfer to novel ones.

>>> d = get_domain("satellite")
>>> d.name, d.num_classes, d.classnames[0]
('ToySatellite', 32, 'red circle')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmlens.data.toyworld import render as R

H = R.IMAGE_SIZE
HUES = tuple(R.HUE_COLOURS)


def noun_phrase(colour: str | None, shape: str | None, pattern: str | None = None) -> str:
    """Words for an object: ``"red star"``, ``"red striped star"``, ``"plain red star"``, ``"red striped"``.

    Examples
    --------
    >>> noun_phrase("red", "star"), noun_phrase("gray", "hexagon", "plain"), noun_phrase("blue", None, "dotted")
    ('red star', 'plain gray hexagon', 'blue dotted')
    """
    words = []
    if pattern == "plain":
        words.append("plain")
    if colour:
        words.append(colour)
    if pattern and pattern != "plain":
        words.append(pattern)
    if shape:
        words.append(shape)
    return " ".join(words)


@dataclass(frozen=True)
class ToyClass:
    """One class: the attributes that define it (``None`` = not part of the class, sampled freely)."""

    colour: str | None
    shape: str | None
    pattern: str | None

    @property
    def name(self) -> str:
        return noun_phrase(self.colour, self.shape, self.pattern)


def latin_classes(
    rows: Sequence[str], cols: Sequence[str], offsets: Sequence[int], make: Callable[[str, str], ToyClass]
) -> list[ToyClass]:
    """Classes ``make(rows[i], cols[(i + t) % len(cols)])`` for each offset ``t`` (a Latin-square draw).

    Every offset contributes one class per row value and ``min(len(rows), len(cols))`` distinct column
    values, so a few offsets cover all values of both attributes with few combinations.
    """
    return [make(rows[i], cols[(i + t) % len(cols)]) for t in offsets for i in range(len(rows))]


@dataclass(frozen=True)
class Domain:
    """A toyworld domain: a class list and a renderer with a documented shift from ``photo``."""

    key: str
    name: str
    folder: str
    shift: str
    echoes: str
    classes: tuple[ToyClass, ...]
    renderer: Callable[[np.random.Generator, dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
    extra: dict = field(default_factory=dict)

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.name}.json"

    def attributes(self, labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per-image attributes of class ``labels``; attributes a class leaves open are drawn from ``rng``."""
        n = len(labels)
        out = {}
        for attr, choices in (("colour", HUES), ("shape", R.SHAPES), ("pattern", R.PATTERNS)):
            fixed = np.array([getattr(self.classes[i], attr) or "" for i in labels], dtype=object)
            free = np.array(choices, dtype=object)[rng.integers(0, len(choices), size=n)]
            out[attr] = np.where(fixed == "", free, fixed).astype(str)
        return out

    def render(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Images ``uint8 [N, 64, 64, 3]`` and masks ``bool [N, 64, 64]`` for class ``labels``."""
        attrs = self.attributes(np.asarray(labels), rng)
        img, mask = self.renderer(rng, attrs)
        return R.to_uint8(img), mask


# ----------------------------------------------------------------------------------------------------------
# Building blocks shared by the renderers


def _jitter_colour(rng: np.random.Generator, base: np.ndarray, gain=(0.88, 1.08), sd: float = 7.0):
    n = base.shape[0]
    return base * rng.uniform(*gain, size=(n, 1)).astype(np.float32) + rng.normal(0, sd, (n, 3)).astype(
        np.float32
    )


def _plain_background(rng: np.random.Generator, colours: np.ndarray, gradient: float, texture: float):
    """Flat colour + linear gradient (random direction) + smooth value noise, ``[N, H, W, 3]``."""
    n = colours.shape[0]
    yy, xx = R.pixel_grid(n)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    ramp = ((xx - H / 2) * np.cos(theta) + (yy - H / 2) * np.sin(theta)) / (H / 2)
    amp = rng.uniform(-gradient, gradient, n).astype(np.float32)[:, None, None]
    shade = amp * ramp + texture * R.smooth_noise(rng, n, 4)
    return colours[:, None, None, :] + shade[..., None]


def class_colour(
    rng: np.random.Generator, names: np.ndarray, scale: float = 1.0, gain=(0.88, 1.08), sd: float = 7.0
) -> np.ndarray:
    """Jittered colours ``float32 [N, 3]`` of the class objects (every renderer paints its class object
    with colours from here, and nothing else with them; the mask tests rely on that)."""
    return _jitter_colour(rng, R.colour_array(names, R.COLOURS) * scale, gain=gain, sd=sd)


def _pick_backgrounds(rng: np.random.Generator, obj: np.ndarray, palette: dict, min_dist: float = 90.0):
    """Background palette entries at least ``min_dist`` (RGB distance) away from each object colour."""
    names = np.array(list(palette))
    table = np.stack([np.asarray(v, np.float32) for v in palette.values()])
    dist = np.linalg.norm(obj[:, None, :] - table[None], axis=-1)  # [N, P]
    allowed = (dist >= min_dist) | (dist == dist.max(axis=1, keepdims=True))  # never empty
    idx = np.argmax(rng.random(allowed.shape) * allowed, axis=1)  # a random allowed entry per row
    return names[idx], table[idx]


def _draw_object(
    rng: np.random.Generator,
    img: np.ndarray,
    colour: np.ndarray,
    shape: np.ndarray,
    pattern: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    *,
    period=(4.5, 7.0),
    ink_dark: float = 0.35,
    wobble: float = 0.0,
    outline: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint solid or patterned objects onto ``img``; return the new image and the object masks.

    Pattern ink is a light tint or a dark shade of the object colour; ``outline`` > 0 draws a dark
    border of that many pixels just inside the silhouette (clip-art style).
    """
    n = img.shape[0]
    yy, xx = R.pixel_grid(n)
    u, v = R.object_coords(xx, yy, cx, cy, radius, angle)
    if wobble:
        ph = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)[:, :, None, None]
        u, v = u + wobble * np.sin(2.5 * np.pi * v + ph[0]), v + wobble * np.sin(2.5 * np.pi * u + ph[1])
    mask = R.by_group(shape, R.shape_mask, u, v, out_shape=(n, H, H))
    # patterns live in their own frame (pixels, random angle and phase), so stripes need not follow the shape
    pa = rng.uniform(0, np.pi, n).astype(np.float32)
    per = rng.uniform(*period, n).astype(np.float32)
    ph = rng.uniform(0, 1, (2, n)).astype(np.float32)[:, :, None, None] * per[None, :, None, None]
    pu, pv = R.object_coords(xx, yy, cx, cy, np.ones(n, np.float32), pa)
    ink = R.by_group(pattern, R.pattern_mask, pu + ph[0], pv + ph[1], per, out_shape=(n, H, H))
    light = rng.random(n) < 0.5
    ink_colour = np.where(light[:, None], colour * 0.35 + 160.0, colour * ink_dark).astype(np.float32)
    layer = np.where(ink[..., None], ink_colour[:, None, None, :], colour[:, None, None, :])
    if outline:
        edge = mask & ~R.erode(mask, outline)
        layer = np.where(edge[..., None], (colour * 0.3)[:, None, None, :], layer)
    return R.composite(img, mask, layer), mask


def _noise(rng: np.random.Generator, img: np.ndarray, sd: float) -> np.ndarray:
    return img + rng.normal(0.0, sd, img.shape).astype(np.float32)


def _desaturate(img: np.ndarray, keep: float) -> np.ndarray:
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return lum[..., None] + keep * (img - lum[..., None])


# ----------------------------------------------------------------------------------------------------------
# Renderers. Each takes (rng, attrs) and returns (float image [N,H,W,3] in 0..255, bool mask [N,H,W]).
# The RNG is consumed in a fixed order, so the same seed gives identical bytes.


def photo_scene(
    rng: np.random.Generator,
    attrs: dict[str, np.ndarray],
    *,
    neutral: float = 0.0,
    radius: tuple[float, float] = (16.0, 26.0),
    outline: int = 1,
):
    """The photo domain: one clip-art object, 32-52 px, solid or patterned, on a muted, shaded background.

    With ``neutral > 0`` a fraction of objects takes a neutral colour (white, gray, black, brown), as in
    pre-training; ``attrs['colour']`` is updated in place. ``radius`` is the range of object radii (px).
    """
    n = len(attrs["shape"])
    if neutral:
        swap = rng.random(n) < neutral
        neutrals = np.array(list(R.NEUTRAL_COLOURS))[rng.integers(0, len(R.NEUTRAL_COLOURS), n)]
        attrs["colour"] = np.where(swap, neutrals, attrs["colour"])
    colour = class_colour(rng, attrs["colour"])
    bg_name, bg = _pick_backgrounds(rng, R.colour_array(attrs["colour"], R.COLOURS), R.PHOTO_BACKGROUNDS)
    attrs["background"] = bg_name
    bg = bg + rng.normal(0, 6, (n, 3)).astype(np.float32)
    img = _plain_background(rng, bg, gradient=18.0, texture=7.0)
    radius = rng.uniform(*radius, n).astype(np.float32)
    cx = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    cy = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    angle = rng.uniform(-0.35, 0.35, n).astype(np.float32)
    attrs.update(radius=radius, cx=cx, cy=cy)
    img, mask = _draw_object(
        rng, img, colour, attrs["shape"], attrs["pattern"], cx, cy, radius, angle, outline=outline
    )
    img = img * rng.uniform(0.92, 1.06, (n, 1, 1, 1)).astype(np.float32)
    return _noise(rng, img, 2.5), mask


_FIELD_COLOURS = np.array(
    [(92, 128, 62), (118, 148, 72), (140, 112, 72), (162, 142, 98), (64, 92, 52), (170, 160, 92)], np.float32
)


def satellite_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Satellite: 1-3 small objects (17-24 px) seen from above on textured fields, under a bluish haze."""
    n = len(attrs["shape"])
    yy, xx = R.pixel_grid(n)
    cells = rng.integers(3, 7, n)
    # patchwork of fields: nearest-neighbour upsampled grids of earthy colours, plus crop rows
    grid = _FIELD_COLOURS[rng.integers(0, len(_FIELD_COLOURS), (n, 7, 7))]
    grid = grid + rng.normal(0, 8, grid.shape).astype(np.float32)
    off = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    gy = np.clip((yy / H * cells[:, None, None] + off[:, 0, None, None]).astype(np.int64), 0, 6)
    gx = np.clip((xx / H * cells[:, None, None] + off[:, 1, None, None]).astype(np.int64), 0, 6)
    img = grid[np.arange(n)[:, None, None], gy, gx]
    theta = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    rows = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / rng.uniform(3, 5, (n, 1, 1)))
    img = img + (7.0 * rows + 10.0 * R.smooth_noise(rng, n, 8))[..., None]
    colour = class_colour(rng, attrs["colour"])
    count = rng.integers(1, 4, n)
    mask = np.zeros((n, H, H), dtype=bool)
    plain = np.full(n, "plain")
    for k in range(3):
        radius = rng.uniform(8.5, 12.0, n).astype(np.float32)
        cx = rng.uniform(radius, H - radius).astype(np.float32)
        cy = rng.uniform(radius, H - radius).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        drawn, m = _draw_object(rng, img, colour, attrs["shape"], plain, cx, cy, radius, angle)
        on = (k < count)[:, None, None]
        img = np.where(on[..., None], drawn, img)
        mask |= m & on
    haze = np.array([178, 188, 202], np.float32)
    img = _desaturate(img * 0.74 + haze * 0.26, 0.7)
    return _noise(rng, img, 4.0), mask


def sketch_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Sketch: a hand-drawn outline (1-2 px, coloured pen) of the object on paper, sometimes hatched.

    The mask is the object's silhouette; the pen strokes lie inside it, the rest of it shows paper.
    """
    n = len(attrs["shape"])
    paper = np.array([242, 239, 230], np.float32) + rng.normal(0, 4, (n, 3)).astype(np.float32)
    img = _plain_background(rng, paper, gradient=6.0, texture=4.0)
    radius = rng.uniform(12.0, 20.0, n).astype(np.float32)
    cx = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    cy = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    angle = rng.uniform(-0.3, 0.3, n).astype(np.float32)
    pen = class_colour(rng, attrs["colour"], scale=0.85)
    silhouette_img, mask = _draw_object(
        rng, img, pen, attrs["shape"], np.full(n, "plain"), cx, cy, radius, angle, wobble=0.03
    )
    width = rng.integers(1, 3, n)
    inner = np.where((width == 1)[:, None, None], R.erode(mask, 1), R.erode(mask, 2))
    stroke = mask & ~inner
    yy, xx = R.pixel_grid(n)
    period = rng.uniform(3.5, 5.0, n).astype(np.float32)[:, None, None]
    hatch = (np.mod((xx + yy) / period, 1.0) < 0.3) & inner & (rng.random(n) < 0.5)[:, None, None]
    light_pen = 0.5 * pen + 0.5 * paper
    img = np.where(stroke[..., None], pen[:, None, None, :], img)
    img = np.where(hatch[..., None], light_pen[:, None, None, :], img)
    return _noise(rng, img, 2.0), mask


_TABLE_COLOURS = {
    "gray": (150, 150, 150), "beige": (205, 190, 160), "wood": (120, 84, 52), "white": (225, 224, 220)
}


def texture_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Texture: a large patterned swatch (the class is its colour and pattern) lying on a table; no shape."""
    n = len(attrs["shape"])
    colour = class_colour(rng, attrs["colour"])
    _, table = _pick_backgrounds(rng, R.colour_array(attrs["colour"], R.COLOURS), _TABLE_COLOURS, 70.0)
    img = _plain_background(rng, table, gradient=12.0, texture=6.0)
    radius = rng.uniform(21.0, 28.0, n).astype(np.float32)
    cx = rng.uniform(27, 37, n).astype(np.float32)
    cy = rng.uniform(27, 37, n).astype(np.float32)
    angle = rng.uniform(-0.3, 0.3, n).astype(np.float32)
    swatch = np.full(n, "square")
    img, mask = _draw_object(
        rng, img, colour, swatch, attrs["pattern"], cx, cy, radius / 0.8, angle, period=(5.0, 9.0)
    )
    shade = 1.0 + 0.1 * R.smooth_noise(rng, n, 3)
    img = np.where(mask[..., None], img * shade[..., None], img)
    return _noise(rng, img, 3.0), mask


def lowlight_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Low light: a photo-domain scene, dimmed to 20-35 %, with a blue night cast and strong sensor noise."""
    img, mask = photo_scene(rng, attrs)
    n = img.shape[0]
    x = img / 255.0 * rng.uniform(0.2, 0.35, (n, 1, 1, 1)).astype(np.float32)
    x = x * np.array([0.8, 0.9, 1.25], np.float32)
    x = x + rng.normal(0, 0.045, x.shape).astype(np.float32) + rng.normal(0, 0.03, x.shape[:3] + (1,)).astype(
        np.float32
    )
    return x * 255.0, mask


def finegrained_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Fine-grained: silver-gray objects in the sky; classes differ by shape and a small surface pattern."""
    n = len(attrs["shape"])
    yy, xx = R.pixel_grid(n)
    top = np.array([110, 160, 222], np.float32) + rng.normal(0, 8, (n, 3)).astype(np.float32)
    bottom = np.array([198, 218, 238], np.float32) + rng.normal(0, 6, (n, 3)).astype(np.float32)
    t = (yy / H)[..., None]
    img = top[:, None, None, :] * (1 - t) + bottom[:, None, None, :] * t
    img = img + (8.0 * np.maximum(R.smooth_noise(rng, n, 5), 0))[..., None]
    colour = class_colour(rng, attrs["colour"], gain=(0.9, 1.1), sd=4.0)
    radius = rng.uniform(16.0, 22.0, n).astype(np.float32)
    cx = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    cy = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    angle = rng.uniform(-0.4, 0.4, n).astype(np.float32)
    img, mask = _draw_object(
        rng, img, colour, attrs["shape"], attrs["pattern"], cx, cy, radius, angle, period=(5.0, 7.0),
        ink_dark=0.45,
    )
    return _noise(rng, img, 2.5), mask


_CLUTTER_COLOURS = np.array(
    [(150, 140, 130), (120, 130, 150), (170, 160, 120), (100, 110, 95), (190, 180, 170), (140, 110, 100)],
    np.float32,
)


def clutter_scene(rng: np.random.Generator, attrs: dict[str, np.ndarray]):
    """Clutter: the class object among 3-6 small distractor objects on a busy background, warm indoor light."""
    n = len(attrs["shape"])
    yy, xx = R.pixel_grid(n)
    base = _CLUTTER_COLOURS[rng.integers(0, len(_CLUTTER_COLOURS), n)]
    img = _plain_background(rng, base, gradient=15.0, texture=8.0)
    for _ in range(5):  # random blocks
        x0, y0 = rng.uniform(-10, H, (2, n)).astype(np.float32)[:, :, None, None]
        w, h = rng.uniform(8, 30, (2, n)).astype(np.float32)[:, :, None, None]
        block = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        c = _CLUTTER_COLOURS[rng.integers(0, len(_CLUTTER_COLOURS), n)] * rng.uniform(0.7, 1.2, (n, 1))
        img = np.where(block[..., None], c[:, None, None, :].astype(np.float32), img)
    all_colours = np.array(list(R.COLOURS))
    count = rng.integers(3, 7, n)
    for k in range(6):  # distractors, never part of the mask
        radius = rng.uniform(3.5, 6.5, n).astype(np.float32)
        cx = rng.uniform(radius, H - radius).astype(np.float32)
        cy = rng.uniform(radius, H - radius).astype(np.float32)
        shape = np.array(R.SHAPES)[rng.integers(0, len(R.SHAPES), n)]
        colour = R.colour_array(all_colours[rng.integers(0, len(all_colours), n)], R.COLOURS)
        drawn, _ = _draw_object(
            rng, img, colour, shape, np.full(n, "plain"), cx, cy, radius, rng.uniform(0, 6.3, n)
        )
        img = np.where((k < count)[:, None, None, None], drawn, img)
    colour = class_colour(rng, attrs["colour"])
    radius = rng.uniform(13.0, 18.0, n).astype(np.float32)
    cx = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    cy = rng.uniform(radius + 1, H - radius - 1).astype(np.float32)
    angle = rng.uniform(-0.35, 0.35, n).astype(np.float32)
    img, mask = _draw_object(rng, img, colour, attrs["shape"], attrs["pattern"], cx, cy, radius, angle)
    img = img * np.array([1.12, 1.0, 0.8], np.float32) + 6.0
    return _noise(rng, img, 3.0), mask


# ----------------------------------------------------------------------------------------------------------
# The domains


def _cs(colour: str, shape: str) -> ToyClass:
    return ToyClass(colour, shape, None)


_FG_SHAPES = ("circle", "square", "hexagon", "diamond", "star", "heart", "triangle", "cross")
_SAT_SHAPES = ("circle", "square", "triangle", "cross", "ring", "arrow")

DOMAINS: dict[str, Domain] = {
    d.key: d
    for d in (
        Domain(
            "photo", "ToyPhoto", "toy_photo",
            shift="none: the pre-training domain (held-out images; the toyworld analogue of ImageNet)",
            echoes="ImageNet",
            classes=tuple(latin_classes(HUES, R.SHAPES, [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11], _cs)),
            renderer=photo_scene,
        ),
        Domain(
            "satellite", "ToySatellite", "toy_satellite",
            shift="1-3 small objects seen from above (any rotation) on textured fields, bluish haze, "
            "desaturated",
            echoes="EuroSAT",
            classes=tuple(latin_classes(HUES, _SAT_SHAPES, [0, 2, 1, 3], _cs)),
            renderer=satellite_scene,
        ),
        Domain(
            "sketch", "ToySketch", "toy_sketch",
            shift="line art: a wobbly coloured outline on paper, sometimes hatched; no filled colour",
            echoes="ImageNet-Sketch",
            classes=tuple(latin_classes(HUES, R.SHAPES, [0, 4, 8, 2, 6, 10], _cs)),
            renderer=sketch_scene,
        ),
        Domain(
            "texture", "ToyTexture", "toy_texture",
            shift="no object shape: a large swatch whose colour and pattern are the class",
            echoes="DTD",
            classes=tuple(
                latin_classes(HUES, R.PATTERNS, [0, 2, 4, 1, 3, 5], lambda c, p: ToyClass(c, None, p))
            ),
            renderer=texture_scene,
        ),
        Domain(
            "lowlight", "ToyLowLight", "toy_lowlight",
            shift="photo scenes dimmed to 20-35 %, blue night cast, strong sensor noise",
            echoes="low-light photos (no single dataset; the noise/illumination shift)",
            classes=tuple(latin_classes(HUES, R.SHAPES, [1, 5, 9, 3, 7, 11], _cs)),
            renderer=lowlight_scene,
        ),
        Domain(
            "finegrained", "ToyFineGrained", "toy_finegrained",
            shift="all objects silver-gray against the sky; classes differ by shape and a small pattern",
            echoes="FGVCAircraft",
            classes=tuple(
                latin_classes(
                    R.PATTERNS, _FG_SHAPES, [0, 2, 4, 6, 1, 3, 5, 7], lambda p, s: ToyClass("gray", s, p)
                )
            ),
            renderer=finegrained_scene,
        ),
        Domain(
            "clutter", "ToyClutter", "toy_clutter",
            shift="the object among 3-6 small distractors on a busy blocky background, warm indoor cast",
            echoes="SUN397 / Caltech101 (cluttered scenes)",
            classes=tuple(latin_classes(HUES, R.SHAPES, [0, 3, 6, 9, 1, 4], _cs)),
            renderer=clutter_scene,
        ),
    )
}

DOWNSTREAM: tuple[str, ...] = tuple(k for k in DOMAINS if k != "photo")


def get_domain(domain: str | Domain) -> Domain:
    """Look a domain up by key (``"satellite"``), dataset name (``"ToySatellite"``) or folder, any case.

    Examples
    --------
    >>> get_domain("toy_sketch").key
    'sketch'
    """
    if isinstance(domain, Domain):
        return domain
    key = str(domain).strip().lower()
    for d in DOMAINS.values():
        if key in (d.key, d.name.lower(), d.folder):
            return d
    raise KeyError(
        f"unknown toyworld domain {domain!r}; expected one of {list(DOMAINS)} "
        f"(or a dataset name such as {[d.name for d in DOMAINS.values()]})"
    )
