"""Small datasets shared by the unit tests: training (``ColourItems``), store integrity (``CountingItems``)."""

from __future__ import annotations

import torch


class ColourItems(torch.utils.data.Dataset):
    """Images whose colour tells the class; item dicts like mmlens.data.ImageDataset's."""

    def __init__(self, classnames=("cat", "dog", "bird"), per_class=4, size=32, labels=None, seed=0):
        self.classnames = list(classnames)
        g = torch.Generator().manual_seed(seed)
        self.labels = labels if labels is not None else [c for c in range(len(classnames)) for _ in range(per_class)]
        base = torch.rand(len(self.classnames), 3, 1, 1, generator=g)
        self.images = [(base[y] + 0.1 * torch.rand(3, size, size, generator=g)).clamp(0, 1) for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "classname": self.classnames[self.labels[i]],
                "path": f"img{i}.png", "mask": None, "index": i}


class CountingItems(torch.utils.data.Dataset):
    """Random images as mmlens samples, counting ``__getitem__`` calls; optionally interrupted at call ``stop_at``."""

    def __init__(self, n: int = 24, seed: int = 1, stop_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.calls: list[int] = []
        self.stop_at = stop_at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        self.calls.append(i)
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt("simulated interruption")
        return {"image": self.images[i], "label": i % 3, "classname": ["cat", "dog", "owl"][i % 3],
                "path": f"img{i}.png", "mask": None, "index": i}
