"""Per-channel parameters outside any module (layer scales: ``gamma[:, None, None] * x``,
``x * self.beta`` of shape (1, C, 1, 1)) follow their channels: a residual stream that passes
through them is pruned, the parameters shrink, the saved spec rebuilds them."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compression.artifacts import build_model
from compression.graph.layers import analyse, choose_layers
from compression.surgery.dead_channels import liveness_of
from compression.surgery.thinning import mask_inputs, thin
from compression.surgery.unread import unread_channels
from utils.model_io import module_spec

SHAPE = (1, 8, 8)


class LayerScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.beta = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.head = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.gamma[:, None, None] * F.relu(self.a(x))
        x = x + F.relu(self.b(x)) * self.beta
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


def test_layer_scales_shrink_with_the_stream_and_rebuild_from_the_spec():
    torch.manual_seed(0)
    model = LayerScaled().eval()
    layers = analyse(model, SHAPE)
    assert set(layers[0].graph.params) == {"gamma", "beta"}
    keep = {layer.name: torch.arange(0, layer.in_channels, 2)
            for layer in choose_layers(layers, True, False, [])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    thinned, spec = thin(masked, layers, keep, module_spec(model))
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-6)
    assert thinned.gamma.shape == (8,) and thinned.beta.shape == (1, 8, 1, 1)
    assert thinned.stem.out_channels == thinned.a.out_channels == thinned.b.out_channels == 8
    assert torch.equal(thinned.gamma, model.gamma[::2])
    rebuilt = build_model(spec, base=LayerScaled())
    rebuilt.load_state_dict(thinned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), thinned(x))
    assert unread_channels(thinned, SHAPE) == {} and liveness_of(thinned, SHAPE) == ({}, [])
