"""Few-shot draws (seeded, reproducible across processes, stable) and the base/novel split."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from mmlens.data import Item, base_novel, few_shot
from mmlens.data.protocol import few_shot_seed
from mmlens.stats import harmonic_mean


def _items(counts: dict[int, int]) -> list[Item]:
    return [Item(f"/d/c{lab}/img{i:03d}.jpg", lab, f"class {lab}") for lab, n in counts.items() for i in range(n)]


ITEMS = _items({0: 30, 1: 30, 2: 3, 3: 16, 4: 25})


def test_k_per_class_and_no_duplicates():
    draw = few_shot(ITEMS, 16, seed=1, key=("EuroSAT", "train"))
    per = {lab: [it for it in draw if it.label == lab] for lab in range(5)}
    assert {lab: len(v) for lab, v in per.items()} == {0: 16, 1: 16, 2: 3, 3: 16, 4: 16}
    assert len({it.path for it in draw}) == len(draw)
    assert set(draw) <= set(ITEMS)


def test_val_uses_at_most_four_shots():
    draw = few_shot(ITEMS, 16, seed=1, key=("EuroSAT", "val"))
    assert [sum(it.label == lab for it in draw) for lab in range(5)] == [4, 4, 3, 4, 4]
    assert len(few_shot(ITEMS, 2, seed=1, key=("EuroSAT", "val"))) == 10


def test_reproducible_and_independent_of_input_order_and_global_rng():
    a = few_shot(ITEMS, 4, seed=2, key=("EuroSAT", "train"))
    shuffled = list(ITEMS)
    random.Random(0).shuffle(shuffled)
    random.seed(12345)
    b = few_shot(shuffled, 4, seed=2, key=("eurosat", "train"))  # name is case-insensitive
    assert a == b


def test_seed_k_split_and_dataset_all_change_the_draw():
    base = few_shot(ITEMS, 4, seed=1, key=("EuroSAT", "train"))
    assert few_shot(ITEMS, 4, seed=2, key=("EuroSAT", "train")) != base
    assert few_shot(ITEMS, 4, seed=1, key=("DTD", "train")) != base
    assert few_shot(ITEMS, 4, seed=1, key=("EuroSAT", "test")) != base
    assert few_shot_seed("EuroSAT", "train", 4, 1) != few_shot_seed("EuroSAT", "train", 8, 1)


def test_stable_when_a_class_has_fewer_than_k():
    """Classes are drawn with their own seeds: shrinking one class below k changes only that class."""
    full = few_shot(ITEMS, 8, seed=3, key=("DTD", "train"))
    fewer = [it for it in ITEMS if not (it.label == 4 and it.path > "/d/c4/img004.jpg")]  # class 4: 5 < 8
    draw = few_shot(fewer, 8, seed=3, key=("DTD", "train"))
    assert [it for it in draw if it.label != 4] == [it for it in full if it.label != 4]
    assert [it for it in draw if it.label == 4] == [it for it in ITEMS if it.label == 4][:5]
    # and removing a whole class does not move the others either
    without2 = few_shot([it for it in ITEMS if it.label != 2], 8, seed=3, key=("DTD", "train"))
    assert without2 == [it for it in full if it.label != 2]


def test_matches_an_independent_reimplementation():
    """Reference: sha256-seeded random.Random per class over the path-sorted class items."""
    import hashlib

    k, seed = 5, 1
    draw = few_shot(ITEMS, k, seed=seed, key=("EuroSAT", "train"))
    expected = []
    for lab in range(5):
        group = sorted((it for it in ITEMS if it.label == lab), key=lambda it: it.path)
        if len(group) <= k:
            expected += group
            continue
        text = f"mmlens-fewshot|EuroSAT|train|{k}|{seed}|{lab}"
        s = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        idx = sorted(random.Random(s).sample(range(len(group)), k))
        expected += [group[i] for i in idx]
    assert draw == expected


_CHILD = """
import json, sys
from mmlens.data import Item, few_shot
items = [Item(f"/d/c{lab}/img{i:03d}.jpg", lab, str(lab)) for lab in range(6) for i in range(40)]
items.reverse()
print(json.dumps([it.path for it in few_shot(items, 16, seed=int(sys.argv[1]), key=("SUN397", "train"))]))
"""


def test_deterministic_across_processes():
    here = [
        it.path
        for it in few_shot(
            [Item(f"/d/c{lab}/img{i:03d}.jpg", lab, str(lab)) for lab in range(6) for i in range(40)],
            16,
            seed=2,
            key=("sun397", "train"),
        )
    ]
    outs = []
    for hashseed in ("0", "4242"):  # different str-hash randomisation in each child
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        res = subprocess.run([sys.executable, "-c", _CHILD, "2"], capture_output=True, text=True, env=env, check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == here
    assert len(here) == 6 * 16


def test_bad_arguments():
    with pytest.raises(TypeError, match="key must be \\(dataset, split\\)"):
        few_shot(ITEMS, 4, 1, key="EuroSAT")
    with pytest.raises(ValueError, match="k \\(shots per class\\) must be >= 1"):
        few_shot(ITEMS, 0, 1, key=("EuroSAT", "train"))
    with pytest.raises(ValueError, match="which must be"):
        base_novel(ITEMS, ["a"] * 5, "bsae")


@pytest.mark.parametrize("n,base,novel", [(1, 1, 0), (2, 1, 1), (5, 3, 2), (10, 5, 5), (37, 19, 18)])
def test_base_novel_hand_cases(n, base, novel):
    names = [f"c{i}" for i in range(n)]
    items = [Item(f"{i}.jpg", i, names[i]) for i in range(n)]
    bi, bn = base_novel(items, names, "base")
    ni, nn = base_novel(items, names, "novel")
    assert (len(bn), len(nn)) == (base, novel)
    assert bn == names[:base] and nn == names[base:]
    assert [it.label for it in bi] == list(range(base)) and [it.label for it in ni] == list(range(novel))
    assert [it.classname for it in ni] == names[base:]
    assert base_novel(items, names, "all") == (items, names)


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
