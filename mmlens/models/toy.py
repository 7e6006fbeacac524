"""The tiny toyworld CLIP: its open_clip config ``mmlens-toy``, word-level tokenizer and shipped weights.

The model is an ordinary open_clip ``CLIP`` (a small ViT on 64x64 images with 8x8 patches and a small
causal text transformer). Nothing here downloads anything: :func:`register` adds the architecture to
open_clip's config registry in memory, :func:`get_tokenizer` builds the tokenizer from the fixed
vocabulary below, and :data:`WEIGHTS_FILE` is the state dict shipped inside the package (trained by
``mmlens toy pretrain``; see ``docs/toyworld.md``).

>>> from mmlens.models import toy
>>> toy.register()
>>> import open_clip
>>> model = open_clip.create_model(toy.TOY_MODEL_NAME, pretrained=None)
>>> tok = toy.get_tokenizer()
>>> tok(["a photo of a red star."]).shape
torch.Size([1, 32])
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOY_MODEL_NAME = "mmlens-toy"
TAG = "toyworld"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_FILE = ASSETS_DIR / "toyworld_clip.safetensors"
WEIGHTS_SIDECAR = ASSETS_DIR / "toyworld_clip.json"

CONTEXT_LENGTH = 32
VOCAB_SIZE = 512  # ids 0..511; words fill the low ids, the rest are reserved, 511 is EOT

PAD_TOKEN, UNK_TOKEN, SOT_TOKEN, EOT_TOKEN = "<pad>", "<unk>", "<start_of_text>", "<end_of_text>"

#: The architecture. Text width 64 / 4 heads, vision width 64 / 4 heads (head_width 16) on 32x32 inputs
#: with 4x4 patches (an 8x8 grid; toyworld's 64x64 scenes are resized by the preprocess), 6 blocks each,
#: QuickGELU like OpenAI's CLIP (MaPLe's backbone); embed_dim 64.
TOY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {
        "image_size": 32,
        "patch_size": 4,
        "width": 64,
        "head_width": 16,
        "layers": 6,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": VOCAB_SIZE,
        "width": 64,
        "heads": 4,
        "layers": 6,
        "mlp_ratio": 4.0,
    },
}

# The vocabulary is frozen: changing the order of words changes token ids and invalidates the shipped
# weights. New words may only be appended (they take reserved ids and start untrained).
_WORDS: tuple[str, ...] = (
    # punctuation
    ".", ",", "-", "'", ":", ";", "!", "?", "(", ")", "/", "&", '"',
    # function words
    "a", "an", "the", "of", "on", "in", "with", "and", "or", "is", "it", "this", "that", "there",
    "its", "at", "to", "for", "from", "by", "as", "one", "two", "three", "some", "many", "very",
    "which", "has", "are", "be", "was", "not", "no", "i", "my", "me", "you", "your", "we", "our",
    "x",
    # what an image is
    "photo", "photograph", "picture", "image", "snapshot", "rendering", "render", "drawing", "sketch",
    "painting", "cartoon", "illustration", "view", "scene", "close", "up", "cropped", "shot",
    "itap", "jpeg", "pixelated", "blurry", "bright", "dark", "good", "bad", "nice", "cool", "weird",
    "clean", "dirty", "hard", "see", "low", "resolution", "quality", "origami", "plastic", "toy",
    "video", "game", "art", "embroidered", "graffiti", "tattoo", "sculpture", "plushie", "rendition",
    "doodle", "black", "white", "centered", "satellite", "aerial", "overhead", "type", "kind",
    "sort", "pet", "flower", "food", "aircraft", "car", "person", "doing", "texture", "textures",
    "pattern", "patterned", "object", "objects", "thing", "shape", "shaped", "item", "sticker",
    "symbol", "icon", "sign",
    # colours
    "red", "orange", "yellow", "green", "teal", "cyan", "blue", "purple", "violet", "pink",
    "magenta", "brown", "gray", "grey", "silver", "gold", "golden", "beige", "navy", "lime",
    "olive", "maroon", "cream", "colour", "color", "colored", "coloured", "light", "pale", "deep",
    # shapes
    "circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon", "pentagon",
    "octagon", "ring", "crescent", "moon", "arrow", "bowtie", "frame", "oval", "ellipse",
    "rectangle", "plus", "drop", "disc", "disk", "dot", "round", "box", "kite", "bar",
    # patterns
    "plain", "solid", "striped", "stripes", "stripe", "dotted", "dots", "spotted", "spots",
    "checkered", "checks", "checkerboard", "zigzag", "zigzags", "wavy", "waves", "grid",
    "speckled", "lined", "lines",
    # size and position
    "small", "large", "big", "tiny", "huge", "medium", "sized", "left", "right", "top", "bottom",
    "middle", "center", "centre", "corner", "upper", "lower", "side", "near", "edge", "far",
    # backgrounds and scenes
    "background", "backdrop", "surface", "field", "fields", "land", "ground", "grass", "soil",
    "farm", "farmland", "sea", "lake", "river", "forest", "road", "building", "sky", "paper",
    "table", "floor", "wall", "night", "day", "room", "clutter", "cluttered", "busy", "messy",
    "crowded", "among", "other", "others", "between", "behind", "front", "next",
    # styles and shifts
    "line", "lines", "outline", "outlined", "drawn", "pencil", "pen", "ink", "hand", "noisy",
    "noise", "grainy", "dim", "dimly", "lit", "lighting", "fine", "grained",
    "detail", "details", "textured", "haze", "hazy", "faded", "tinted", "warm",
    "cold", "glow", "shadow", "shadows", "domain", "style",
    # verbs and the rest
    "showing", "shows", "show", "containing", "contains", "features", "featuring", "lying",
    "sitting", "placed", "drawn", "seen", "from", "above", "only", "single", "alone", "here",
)

_TOKEN_RE = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def _build_vocab() -> dict[str, int]:
    vocab: dict[str, int] = {PAD_TOKEN: 0, UNK_TOKEN: 1, SOT_TOKEN: 2}
    for w in _WORDS:
        if w not in vocab and _TOKEN_RE.fullmatch(w):
            vocab[w] = len(vocab)
    if len(vocab) >= VOCAB_SIZE - 1:
        raise RuntimeError(
            f"toy vocabulary has {len(vocab)} entries but VOCAB_SIZE is {VOCAB_SIZE}; "
            "raise VOCAB_SIZE (and retrain) or drop words"
        )
    vocab[EOT_TOKEN] = VOCAB_SIZE - 1
    return vocab


class ToyTokenizer:
    """Word-level tokenizer of the toyworld CLIP.

    Lower-cases, treats ``_`` as a space, splits into words, numbers and single punctuation marks,
    maps unknown words to ``<unk>`` and never raises on text. Output rows are
    ``[SOT, w1, ..., wk, EOT, 0, ..., 0]``; the EOT id (511) is the largest id in the vocabulary,
    so open_clip's argmax pooling reads the EOT position. Too long texts are cut and end in EOT,
    as in open_clip's ``SimpleTokenizer``.

    Parameters
    ----------
    context_length : int
        Default row length.

    Examples
    --------
    >>> tok = ToyTokenizer()
    >>> ids = tok("a photo of a red star.")[0]
    >>> int(ids[0]) == tok.sot_token_id, int(ids.argmax()) == 8
    (True, True)
    >>> tok.decode(ids.tolist())
    'a photo of a red star .'
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = int(context_length)
        self.vocab: dict[str, int] = _build_vocab()
        self.id_to_token: dict[int, str] = {i: w for w, i in self.vocab.items()}
        self.pad_token_id = self.vocab[PAD_TOKEN]
        self.unk_token_id = self.vocab[UNK_TOKEN]
        self.sot_token_id = self.vocab[SOT_TOKEN]
        self.eot_token_id = self.vocab[EOT_TOKEN]
        self.vocab_size = VOCAB_SIZE
        self.all_special_ids = [self.pad_token_id, self.unk_token_id, self.sot_token_id, self.eot_token_id]

    def split(self, text: str) -> list[str]:
        """Split ``text`` into the word pieces the vocabulary is indexed by."""
        return _TOKEN_RE.findall(str(text).lower().replace("_", " "))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT (unknown words map to ``<unk>``)."""
        return [self.vocab.get(w, self.unk_token_id) for w in self.split(text)]

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` that are not in the vocabulary (they become ``<unk>``)."""
        return [w for w in self.split(text) if w not in self.vocab]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids``, stopping at EOT, skipping SOT and padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_token_id:
                break
            if i in (self.sot_token_id, self.pad_token_id):
                continue
            out.append(self.id_to_token.get(i, UNK_TOKEN))
        return " ".join(out)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None):
        """Tokenize ``texts`` into a ``LongTensor[N, context_length]`` (pad id 0)."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {length}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return (
            f"ToyTokenizer(words={len(self.vocab) - 4}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )


def register() -> None:
    """Register the ``mmlens-toy`` architecture with open_clip (idempotent, offline).

    Examples
    --------
    >>> register(); register()
    >>> import open_clip
    >>> "mmlens-toy" in open_clip.list_models()
    True
    """
    from open_clip import factory

    if factory._MODEL_CONFIGS.get(TOY_MODEL_NAME) != TOY_MODEL_CONFIG:
        factory._MODEL_CONFIGS[TOY_MODEL_NAME] = copy.deepcopy(TOY_MODEL_CONFIG)


def get_tokenizer(context_length: int | None = None) -> ToyTokenizer:
    """The tokenizer of the toy CLIP (see :class:`ToyTokenizer`).

    Examples
    --------
    >>> get_tokenizer()("a photo of a blue ring.", context_length=12).shape
    torch.Size([1, 12])
    """
    return ToyTokenizer(context_length or CONTEXT_LENGTH)


def create_model(pretrained: bool = True, device: str = "cpu"):
    """Build the toy CLIP with open_clip, loading the shipped weights when ``pretrained``.

    This is a convenience for toyworld's own scripts; the package-wide entry point is
    ``mmlens.load_clip("mmlens-toy", pretrained="toyworld")``.

    Examples
    --------
    >>> m = create_model(pretrained=False)
    >>> m.visual.grid_size
    (8, 8)
    """
    import logging

    import open_clip

    register()
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip logs a warning for a random init, which is intended here
    try:
        model = open_clip.create_model(TOY_MODEL_NAME, pretrained=None, device=device)
    finally:
        logger.setLevel(level)
    if pretrained:
        if not WEIGHTS_FILE.is_file():
            raise FileNotFoundError(
                f"expected the shipped toy CLIP weights at {WEIGHTS_FILE}, found nothing; "
                "reinstall mmlens or train them with `mmlens toy pretrain --out FILE`"
            )
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(WEIGHTS_FILE)).items()}
        model.load_state_dict(state)
    model.eval()
    return model
