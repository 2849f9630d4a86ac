"""Transforms (hand-checked values), per-sample generators and the sharded sampler."""
import torch
import torch.nn.functional as F

from datasets import transforms as T
from datasets.base import sample_generator, sample_seed
from datasets.sampler import ShardedSampler, eval_shard_indices


def _grid(c=1, h=4, w=4):
    return torch.arange(c * h * w, dtype=torch.float32).view(c, h, w)


def test_normalize_hand_values():
    x = torch.tensor([[[0.5, 1.0]], [[0.0, 0.25]]])
    y = T.normalize(x, (0.5, 0.25), (0.25, 0.5))
    assert torch.allclose(y, torch.tensor([[[0.0, 2.0]], [[-0.5, 0.0]]]))


def test_pad_and_random_crop_offsets_match_generator():
    x = _grid()
    for seed in range(20):
        ref = torch.Generator().manual_seed(seed)
        top = int(torch.randint(0, 3, (1,), generator=ref))
        left = int(torch.randint(0, 3, (1,), generator=ref))
        out = T.pad_and_random_crop(x, 4, 1, torch.Generator().manual_seed(seed))
        padded = torch.zeros(1, 6, 6)
        padded[:, 1:5, 1:5] = x
        assert torch.equal(out, padded[:, top:top + 4, left:left + 4])


def test_pad_and_random_crop_corner_and_all_offsets_reachable():
    x = _grid() + 1
    seen = set()
    for seed in range(200):
        out = T.pad_and_random_crop(x, 4, 1, torch.Generator().manual_seed(seed))
        assert out.shape == (1, 4, 4)
        # Locate the original top-left pixel (value 1) to recover the offset.
        pos = (out == 1).nonzero()
        if len(pos):
            r, c = pos[0, 1:].tolist()
            seen.add((1 - r, 1 - c))
            if (r, c) == (1, 1):  # crop at (0, 0): zero first row/column
                assert out[0, 0].abs().sum() == 0 and out[0, :, 0].abs().sum() == 0
                assert torch.equal(out[0, 1:, 1:], x[0, :3, :3])
        else:  # offset (2, *) or (*, 2): the pixel fell outside
            seen.add("out")
    assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= seen
    assert torch.equal(T.pad_and_random_crop(x, 4, 0, torch.Generator()), x)


def test_random_hflip():
    x = _grid(2, 2, 3)
    assert torch.equal(T.random_hflip(x, torch.Generator(), p=1.0),
                       torch.tensor([[[2., 1., 0.], [5., 4., 3.]],
                                     [[8., 7., 6.], [11., 10., 9.]]]))
    assert torch.equal(T.random_hflip(x, torch.Generator(), p=0.0), x)
    flips = [not torch.equal(T.random_hflip(x, torch.Generator().manual_seed(s)), x)
             for s in range(100)]
    assert 20 < sum(flips) < 80


def test_center_crop_and_resize_shorter():
    x = _grid(1, 5, 5)
    assert torch.equal(T.center_crop(x, 3), x[:, 1:4, 1:4])
    y = _grid(1, 4, 6)
    assert torch.equal(T.center_crop(y, 2), y[:, 1:3, 2:4])
    z = torch.full((3, 10, 20), 0.3)
    r = T.resize_shorter(z, 5)
    assert r.shape == (3, 5, 10) and torch.allclose(r, torch.full_like(r, 0.3))
    assert T.resize_shorter(torch.rand(1, 20, 10), 5).shape == (1, 10, 5)
    # Bilinear with antialias on a 2x downsample of a ramp matches F.interpolate.
    ramp = _grid(1, 4, 4)
    ref = F.interpolate(ramp[None], size=(2, 2), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    assert torch.allclose(T.resize_shorter(ramp, 2), ref)


def test_random_resized_crop():
    x = torch.rand(3, 20, 30)
    a = T.random_resized_crop(x, 8, torch.Generator().manual_seed(3))
    b = T.random_resized_crop(x, 8, torch.Generator().manual_seed(3))
    assert a.shape == (3, 8, 8) and torch.equal(a, b)
    const = torch.full((3, 20, 30), 0.7)
    out = T.random_resized_crop(const, 8, torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, 0.7))
    sq = torch.rand(1, 8, 8)  # full-area, square crop of a square image: identity
    full = T.random_resized_crop(sq, 8, torch.Generator(), scale=(1.0, 1.0),
                                 ratio=(1.0, 1.0))
    assert torch.allclose(full, sq, atol=1e-6)


def test_augment_chains_in_order():
    aug = T.Augment([lambda x, g: x + 1, lambda x, g: x * 2])
    assert torch.equal(aug(torch.zeros(1, 1, 1), torch.Generator()),
                       torch.full((1, 1, 1), 2.0))


def test_sample_generator_determinism():
    def draw(*key):
        return torch.rand(5, generator=sample_generator(*key))
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 1, 3))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))
    assert 0 <= sample_seed(2 ** 70, -5, 3) < 2 ** 63


def test_sharded_sampler_ranks_disjoint_and_cover():
    n, w = 12, 2
    shards = [list(ShardedSampler(n, r, w, seed=5)) for r in range(w)]
    assert len(shards[0]) == len(shards[1]) == 6 == len(ShardedSampler(n, 1, w))
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert shards[1] == perm[1::2]


def test_sharded_sampler_epochs_and_order():
    s = ShardedSampler(10, 0, 1, seed=1)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(10))
    other = ShardedSampler(10, 0, 1, seed=2)  # seed + epoch: seed 2, epoch 0
    assert list(other) == e1
    assert list(ShardedSampler(7, 1, 3, shuffle=False)) == [1, 4]


def test_sharded_sampler_uneven():
    shards = [list(ShardedSampler(11, r, 3, seed=0)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set(sum(shards, []))) == 9
    padded = [ShardedSampler(11, r, 3, drop_last=False) for r in range(3)]
    assert [len(s) for s in padded] == [4, 4, 4]
    assert [len(list(s)) for s in padded] == [4, 4, 4]
    assert set(sum((list(s) for s in padded), [])) == set(range(11))


def test_eval_shard_indices_cover_once():
    n, w = 11, 3
    allidx = sum((eval_shard_indices(n, r, w) for r in range(w)), [])
    assert sorted(allidx) == list(range(n))
    assert eval_shard_indices(n, 2, w) == [2, 5, 8]
