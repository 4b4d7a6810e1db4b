import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.models.random_models import random_state_dict, randomised, write_checkpoint


def test_random_checkpoints_are_seeded(tmp_path):
    first, again, other = random_state_dict(seed=1), random_state_dict(seed=1), random_state_dict(seed=2)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["visual.conv1.weight"], other["visual.conv1.weight"])
    model = cc.load(weights=write_checkpoint(tmp_path / "t.pt", seed=1), device="cpu", precision="fp32")
    # build_model keeps CLIP's fp16 weights: what loads is the checkpoint rounded to fp16.
    assert torch.equal(model.net.state_dict()["visual.conv1.weight"], first["visual.conv1.weight"].half().float())


@pytest.mark.parametrize("architecture", ["tiny", "tiny-resnet"])
def test_randomised_keeps_the_architecture_and_redraws_every_learnt_tensor(tmp_path, architecture):
    model = cc.load(weights=write_checkpoint(tmp_path / "m.pt", architecture, seed=5), device="cpu", precision="fp32")
    before = {name: tensor.clone() for name, tensor in model.net.state_dict().items()}
    fresh, again = randomised(model, seed=0), randomised(model, seed=0)
    after = fresh.net.state_dict()
    assert {n: t.shape for n, t in after.items()} == {n: t.shape for n, t in before.items()}
    assert all(torch.equal(before[n], t) for n, t in model.net.state_dict().items())  # the original is untouched
    assert all(torch.equal(t, again.net.state_dict()[n]) for n, t in after.items())  # seeded
    # Every weight matrix, embedding and projection is redrawn (norms and biases re-initialise to constants).
    redrawn = [n for n, t in before.items()
               if (n.endswith("weight") and t.ndim >= 2) or n.endswith(("embedding", "proj", "projection"))]
    assert redrawn and all(not torch.equal(before[n], after[n]) for n in redrawn)
    assert fresh.n_px == model.n_px and "randomised" in fresh.name and fresh.key != model.key


def test_a_randomised_model_still_explains(tiny, photo):
    answer = cc.explain(randomised(tiny), photo, cc.Question(corpus=["dog"], foil=["cat"]), masks=50, cache=None)
    assert answer.heatmap.shape == (45, 70) and answer.heatmap.std() > 0
