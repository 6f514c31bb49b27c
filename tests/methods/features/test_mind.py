"""MIND-SSC: the neighbour pairs, hand-computed distances, and the invariances it promises."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmreg.methods.features.mind import box_filter, mind_ssc, neighbour_pairs, pair_distances


@pytest.mark.parametrize(("ndim", "count"), [(2, 4), (3, 12)])
def test_pairs_are_the_orthogonal_neighbours(ndim, count):
    pairs = neighbour_pairs(ndim)
    assert len(pairs) == count
    for a, b in pairs:
        assert sum(map(abs, a)) == sum(map(abs, b)) == 1  # unit neighbours, never the centre
        assert sum(p * q for p, q in zip(a, b, strict=True)) == 0  # orthogonal: |a-b|^2 = 2
    assert len(set(pairs)) == count


def test_pair_distances_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])[None, None]
    d = pair_distances(x, dilation=1)
    assert d.shape == (1, 4, 3, 3)
    # At the centre, each pair compares two orthogonal neighbours of 5: up 2, down 8,
    # left 4, right 6.
    expected = {
        ((-1, 0), (0, -1)): (2 - 4) ** 2,
        ((-1, 0), (0, 1)): (2 - 6) ** 2,
        ((1, 0), (0, -1)): (8 - 4) ** 2,
        ((1, 0), (0, 1)): (8 - 6) ** 2,
    }
    for k, (a, b) in enumerate(neighbour_pairs(2)):
        key = (a, b) if (a, b) in expected else (b, a)
        assert float(d[0, k, 1, 1]) == expected[key]
    # Corner (0, 0): the neighbours outside the image repeat the border value.
    assert float(d[0, 0, 0, 0]) >= 0.0


def test_pair_distances_keep_channels_apart():
    x = torch.rand(1, 2, 5, 6, 7)
    both = pair_distances(x, 2)
    assert both.shape == (1, 24, 5, 6, 7)
    assert torch.equal(both[:, 12:], pair_distances(x[:, 1:], 2))


def test_box_filter_is_a_local_mean():
    x = torch.zeros(1, 1, 5, 5, 5)
    x[0, 0, 2, 2, 2] = 27.0
    y = box_filter(x, 1)
    assert float(y[0, 0, 2, 2, 2]) == pytest.approx(1.0)
    assert float(y[0, 0, 1, 1, 1]) == pytest.approx(1.0)
    assert float(y[0, 0, 0, 0, 0]) == 0.0
    assert float(y.sum()) == pytest.approx(27.0)


def test_mind_is_contrast_invariant():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 14, 15, 16)
    reference = mind_ssc(image)
    assert reference.shape == (1, 12, 14, 15, 16)
    assert float(reference.min()) > 0.0 and float(reference.max()) <= 1.0
    # Gain, offset and inversion change no squared difference ratio.
    for other in (4.0 * image + 100.0, 1.0 - image):
        assert torch.allclose(mind_ssc(other), reference, atol=1e-4)  # float32 at +100
    # ...but a different image gets different descriptors.
    assert not torch.allclose(mind_ssc(torch.rand_like(image)), reference, atol=0.1)


def test_mind_of_a_flat_image_is_one_and_an_edge_is_seen():
    flat = torch.full((1, 1, 9, 9), 3.0)
    assert torch.equal(mind_ssc(flat), torch.ones(1, 4, 9, 9))
    step = torch.zeros(1, 1, 9, 9)
    step[..., 5:] = 1.0  # a vertical edge between columns 4 and 5
    m = mind_ssc(step, radius=0, dilation=1)
    assert float(m[..., 4, 0:2].min()) == 1.0  # far from the edge: flat
    assert float(m[..., 4, 4:6].min()) < 0.5  # pairs straddling the edge differ


@pytest.mark.parametrize(("radius", "dilation"), list(itertools.product((0, 1, 2), (1, 2, 3))))
def test_mind_parameters(radius, dilation):
    image = torch.rand(1, 1, 10, 11, 12)
    m = mind_ssc(image, radius=radius, dilation=dilation)
    assert m.shape == (1, 12, 10, 11, 12) and torch.isfinite(m).all()


def test_mind_rejects_other_shapes():
    with pytest.raises(ValueError, match="expects"):
        mind_ssc(torch.rand(1, 2, 5, 5, 5))
    with pytest.raises(ValueError, match="2D or 3D"):
        neighbour_pairs(4)
