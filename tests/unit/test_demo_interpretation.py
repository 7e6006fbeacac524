"""The demo's closing sentences are worded from its numbers, whichever way they came out."""

from __future__ import annotations

from mmlens.experiments.demo import interpretation

LAYERS = {0: {"kind": "injected", "prompt_mass": 0.02, "bias_norm_ratio": 0.1},
          1: {"kind": "injected", "prompt_mass": 0.04, "bias_norm_ratio": 0.3},
          2: {"kind": "carried", "prompt_mass": 0.14, "bias_norm_ratio": 0.5}}


def test_gain_and_loss_are_both_reported_as_measured():
    text = " ".join(interpretation({"base": {"zeroshot": 37.0, "full": 58.9},
                                    "novel": {"zeroshot": 30.0, "full": 25.5}}, LAYERS))
    assert "from 37.0 to 58.9 % (+21.9 points)" in text
    assert "from 30.0 to 25.5 % (-4.5 points)" in text  # a loss is said as a loss
    assert "In the 2 blocks where fresh prompts are injected" in text and "3 % of its attention" in text
    assert "0.20 times as large" in text  # mean of 0.1 and 0.3
    assert "In the later block," in text and "14 %" in text
    assert "docs/findings.md" in text
