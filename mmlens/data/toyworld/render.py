"""Vectorised numpy drawing primitives of toyworld: shapes, patterns, backgrounds and photometric effects.

Everything works on whole batches at once (arrays shaped ``[N, H, W]``), without anti-aliasing, so
that an object's mask is exactly the set of pixels it was drawn on.

>>> import numpy as np
>>> yy, xx = pixel_grid(1, 8)
>>> m = shape_mask("circle", *object_coords(xx, yy, np.array([4.0]), np.array([4.0]),
...                                          np.array([3.0]), np.array([0.0])))
>>> int(m.sum())
32
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 64

#: The eight class colours (saturated hues) and four neutral colours, as sRGB uint8 triples.
HUE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (45, 165, 55),
    "teal": (20, 160, 160),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 185),
}
NEUTRAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "brown": (125, 75, 35),
}
COLOURS: dict[str, tuple[int, int, int]] = {**HUE_COLOURS, **NEUTRAL_COLOURS}

#: Object shapes; each is a region of the object's local frame (radius 1 = the object's size).
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "heart",
    "diamond", "hexagon", "ring", "crescent", "arrow", "bowtie",
)
#: Surface patterns (``plain`` = solid colour).
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag", "wavy")

#: Muted background colours of the photo domain (name used in captions, sRGB).
PHOTO_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (165, 165, 165),
    "white": (232, 230, 224),
    "beige": (214, 198, 168),
    "blue": (172, 190, 212),
    "dark": (62, 62, 68),
    "green": (150, 168, 140),
    "brown": (110, 96, 82),
    "light": (205, 205, 200),
}


def pixel_grid(n: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each ``float32 [1, size, size]`` (broadcast over ``n``)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :, None], c[None, None, :]


def object_coords(
    xx: np.ndarray, yy: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates ``(u, v)`` ``[N, H, W]``: centred, rotated by ``angle`` (rad), scaled by 1/radius.

    ``v`` points down the image, so "up" in the object frame is ``v < 0``.
    """
    dx = xx - cx[:, None, None].astype(np.float32)
    dy = yy - cy[:, None, None].astype(np.float32)
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    r = radius.astype(np.float32)[:, None, None]
    return (dx * c + dy * s) / r, (-dx * s + dy * c) / r


def _regular_polygon(u: np.ndarray, v: np.ndarray, n: int, rot: float, radius: float = 1.0) -> np.ndarray:
    """Inside a regular n-gon with circumradius ``radius`` and a vertex at angle ``rot``."""
    apothem = radius * np.cos(np.pi / n)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(n):
        phi = rot + np.pi / n + 2 * np.pi * k / n
        inside &= u * np.float32(np.cos(phi)) + v * np.float32(np.sin(phi)) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.42) -> np.ndarray:
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u) + np.pi / 2  # a point straight up
    sector = 2 * np.pi / points
    a = np.abs(np.mod(phi, sector) - sector / 2)  # 0 at a valley direction? -> recentre below
    a = sector / 2 - a  # 0 at a tip, sector/2 at a valley
    px, py = rho * np.cos(a), rho * np.sin(a)
    ox, oy = 1.0, 0.0
    ix, iy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    # inside if on the origin's side of the line from the tip (ox, oy) to the valley (ix, iy)
    nx, ny = -(iy - oy), (ix - ox)
    side_origin = nx * (0 - ox) + ny * (0 - oy)
    return (nx * (px - ox) + ny * (py - oy)) * np.sign(side_origin) >= 0


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean region of shape ``name`` in object-frame coordinates (all shapes fit in radius ~1)."""
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "triangle":
        return _regular_polygon(u, v + 0.2, 3, -np.pi / 2, 1.15)
    if name == "star":
        return _star(u, v)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "heart":
        x, y = u * 1.2, -v * 1.2 + 0.25
        t = x * x + y * y - 1.0
        return t * t * t - x * x * y * y * y <= 0
    if name == "diamond":
        return np.abs(u) / 0.68 + np.abs(v) <= 1.0
    if name == "hexagon":
        return _regular_polygon(u, v, 6, 0.0)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if name == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + (v + 0.15) ** 2 > 0.8**2)
    if name == "arrow":
        shaft = (u >= -0.95) & (u <= 0.15) & (np.abs(v) <= 0.22)
        head = (u >= 0.05) & (u <= 0.95) & (np.abs(v) <= 0.75 * (0.95 - u))
        return shaft | head
    if name == "bowtie":
        return (np.abs(v) <= 0.85 * np.abs(u) + 0.12) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.85)
    raise ValueError(f"unknown toyworld shape {name!r}; expected one of {SHAPES}")


def pattern_mask(name: str, pu: np.ndarray, pv: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Where a pattern's ink is, in pattern coordinates measured in pixels (``period`` ``[N]`` px)."""
    t = period.astype(np.float32)[:, None, None]
    a, b = pu / t, pv / t
    if name == "plain":
        return np.zeros(np.broadcast(pu, pv).shape, dtype=bool)
    if name == "striped":
        return np.mod(b, 1.0) < 0.5
    if name == "dotted":
        return (np.mod(a, 1.0) - 0.5) ** 2 + (np.mod(b, 1.0) - 0.5) ** 2 < 0.3**2
    if name == "checkered":
        return (np.floor(a * 1.6) + np.floor(b * 1.6)) % 2 == 0
    if name == "zigzag":
        tri = np.abs(np.mod(a * 0.8, 1.0) - 0.5) * 2.0  # triangle wave in [0, 1]
        return np.mod(b + 0.7 * tri, 1.0) < 0.5
    if name == "wavy":
        return np.mod(b + 0.3 * np.sin(2 * np.pi * a * 0.55), 1.0) < 0.5
    raise ValueError(f"unknown toyworld pattern {name!r}; expected one of {PATTERNS}")


def by_group(names: np.ndarray, fn, *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """Evaluate ``fn(name, *arrays[idx])`` per distinct name and scatter the results into one array."""
    out = np.zeros(out_shape, dtype=bool)
    for name in np.unique(names):
        idx = np.nonzero(names == name)[0]
        out[idx] = fn(str(name), *(a[idx] if a.shape[0] == len(names) else a for a in arrays))
    return out


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Binary erosion of ``[N, H, W]`` masks by a 3x3 cross, ``steps`` times (outside counts as empty)."""
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        m = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return m


def smooth_noise(rng: np.random.Generator, n: int, cells: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Smooth value noise ``float32 [N, size, size]`` in about [-1, 1] (bilinear from a cells x cells grid)."""
    g = rng.uniform(-1.0, 1.0, size=(n, cells + 1, cells + 1)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = (pos - i0)[None]
    rows = g[:, i0, :] * (1 - f[..., None]) + g[:, i0 + 1, :] * f[..., None]  # [N, size, cells+1]
    return rows[:, :, i0] * (1 - f[:, None, :]) + rows[:, :, i0 + 1] * f[:, None, :]


def colour_array(names: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """``float32 [N, 3]`` colours of ``names`` looked up in ``palette``."""
    table = {k: np.asarray(v, dtype=np.float32) for k, v in palette.items()}
    return np.stack([table[str(n)] for n in names]).astype(np.float32)


def composite(base: np.ndarray, mask: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``where(mask, layer, base)`` for ``[N, H, W, 3]`` images and ``[N, H, W]`` masks."""
    return np.where(mask[..., None], layer, base)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image in 0..255 to ``uint8``."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
