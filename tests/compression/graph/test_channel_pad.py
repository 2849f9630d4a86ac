"""A pad over the channel dim (``F.pad(x, (0, 0, 0, 0, p, p))``, ``nn.ConstantPad3d`` on a 4-D
tensor, Distiller's pre-activation shortcut) adds channels: the graph must not follow it as a
passthrough, whereas a spatial pad still is one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.graph.layers import analyse
from torch.fx.passes.shape_prop import ShapeProp

from compression.graph.ops import pads_channels, trace, unknown_ops
from compression.surgery.dead_channels import unread_outputs
from compression.surgery.thinning import mask_inputs, thin
from tests.zoo.nets import randomise_bn

SHAPE = (3, 8, 8)


class PadNet(nn.Module):
    """conv a (3 -> 8) -> pad -> conv b (-> 6) -> conv c (6 -> 6) -> pool -> fc."""

    def __init__(self, pad: str) -> None:
        super().__init__()
        self.pad = pad
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.channel_pad = nn.ConstantPad3d((0, 0, 0, 0, 1, 1), 0.0)
        width = {"function": 12, "module": 10, "spatial": 8}[pad]
        self.b = nn.Sequential(nn.Conv2d(width, 6, 3, padding=1 if pad != "spatial" else 0,
                                         bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.c = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.a(x)
        if self.pad == "function":
            x = F.pad(x, (0, 0, 0, 0, 2, 2))          # 8 -> 12 channels
        elif self.pad == "module":
            x = self.channel_pad(x)                    # 8 -> 10 channels
        else:
            x = F.pad(x, (1, 1, 1, 1))                 # spatial only
        x = self.c(self.b(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _model(pad: str) -> nn.Module:
    torch.manual_seed(0)
    model = PadNet(pad)
    randomise_bn(model)
    return model.eval()


def test_pads_channels_reads_the_pad_list_last_dim_first():
    assert not pads_channels((1, 1, 1, 1), (2, 8, 5, 5))
    assert pads_channels((0, 0, 0, 0, 2, 2), (2, 8, 5, 5))
    assert not pads_channels((0, 0, 0, 0, 0, 0), (2, 8, 5, 5))
    assert pads_channels((1, 1, 3, 0), (2, 8, 5))             # 1-D: the pair for dim 1
    assert pads_channels((1, 1), None)                         # unknown shape: not followed


@pytest.mark.parametrize("pad", ["function", "module"])
def test_a_channel_pad_keeps_its_stream_whole_and_thinning_exact(pad):
    model = _model(pad)
    layers = analyse(model, SHAPE)
    by_name = {layer.name: layer for layer in layers}
    # the padded channels are not a's: a reader of them gathers its inputs, never shrinks a
    assert "b.0" not in by_name or (by_name["b.0"].mode == "gather" and by_name["b.0"].producer is None)
    assert "c" in by_name                     # the rest of the net still prunes
    keep = {"c": torch.tensor([0, 2, 4])}
    if "b.0" in by_name:
        keep["b.0"] = torch.tensor([0, 3, 5, 8])
    masked = mask_inputs(model, keep, layers) or model
    thinned, _ = thin(model, layers, keep)
    assert thinned.a[0].out_channels == 8 and thinned.b[0].out_channels == 3
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-5)
    assert unread_outputs(thinned, SHAPE) == {}
    traced = trace(model)
    ShapeProp(traced).propagate(torch.randn(2, *SHAPE))
    assert ("F.pad" in unknown_ops(traced)) == (pad == "function")


def test_a_spatial_pad_is_still_followed():
    model = _model("spatial")
    layers = analyse(model, SHAPE)
    (b,) = [layer for layer in layers if layer.name == "b.0"]
    keep = {"b.0": torch.tensor([0, 1, 5, 7])}
    thinned, _ = thin(model, layers, keep)
    assert thinned.a[0].out_channels == 4
    x = torch.randn(4, *SHAPE)
    masked = mask_inputs(model, keep, layers) or model
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-5)
