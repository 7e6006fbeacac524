"""Class names are written into prompts as MaPLe's and CoOp's PromptLearner write them (``_`` -> space)."""

from __future__ import annotations

import pytest
import torch

from mmlens import PromptedCLIP
from mmlens.models.prompted import ROLE_CODES, classname_in_prompt


@pytest.mark.parametrize("method", ["maple", "coop", "zeroshot"])
def test_underscores_become_spaces_in_prompts_only(tiny_clip, method):
    dataset_names = ["apple_pie", "american_bulldog", "owl"]
    spelled = ["apple pie", "american bulldog", "owl"]
    a = PromptedCLIP(tiny_clip, dataset_names, method=method, depth=2, init_seed=3)
    b = PromptedCLIP(tiny_clip, spelled, method=method, depth=2, init_seed=3)
    assert a.classnames == dataset_names  # the dataset's own names stay (stores and split files agree)
    with torch.no_grad():
        torch.testing.assert_close(a.text_features(), b.text_features(), atol=0, rtol=0)
    # the prompt text itself, as MaPLe's PromptLearner writes it ("a photo of a" is both the MaPLe/CoOp
    # ctx_init and the zero-shot template here): "a photo of a apple pie."
    tokens = a.prompt_tokens if method != "zeroshot" else a.zeroshot_tokens
    assert torch.equal(tokens[0], tiny_clip.tokenizer(["a photo of a apple pie."])[0])
    # the class-name role marks both words of the rewritten name
    roles = a.text_roles(tokens, with_prompts=method != "zeroshot",
                         classname=a.prompt_classname if method != "zeroshot" else a.zeroshot_classname)
    assert int((roles[0] == ROLE_CODES["classname"]).sum()) == len(tiny_clip.tokenizer(["apple pie"])[0].nonzero()) - 2


def test_classname_in_prompt():
    assert classname_in_prompt("Forest_Fire_x") == "Forest Fire x"
    assert classname_in_prompt("cat") == "cat"
