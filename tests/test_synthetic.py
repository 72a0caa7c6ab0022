"""unetlab.synthetic: deterministic, realistic touching cells with consistent instance labels."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as sk_label

from unetlab.synthetic import touching_cells, touching_cells_arrays, touching_pairs


@pytest.fixture(scope="module")
def two():
    return touching_cells_arrays(2, 256, seed=3)


def gap_pairs(lab: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different cells separated by exactly one background pixel (4-neighbours of one
    background pixel) and not touching directly."""
    pad = np.pad(lab, 1)
    nb = [pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]
    bg = lab == 0
    pairs = set()
    for i in range(4):
        for j in range(i + 1, 4):
            a, b = nb[i][bg], nb[j][bg]
            m = (a > 0) & (b > 0) & (a != b)
            pairs.update(zip(np.minimum(a[m], b[m]).tolist(), np.maximum(a[m], b[m]).tolist()))
    return pairs - touching_pairs(lab)


def test_shapes_dtypes_and_non_square():
    (img, lab), = touching_cells_arrays(1, (96, 160), seed=1)
    assert img.shape == lab.shape == (96, 160)
    assert img.dtype == np.float32 and lab.dtype == np.int32
    assert np.isfinite(img).all()


def test_deterministic_per_seed_and_index(two):
    again = touching_cells_arrays(2, 256, seed=3)
    for (a, la), (b, lb) in zip(two, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    # image i does not depend on n
    one = touching_cells_arrays(1, 256, seed=3)[0]
    np.testing.assert_array_equal(one[1], two[0][1])
    other = touching_cells_arrays(1, 256, seed=4)[0]
    assert not np.array_equal(other[1], two[0][1])
    assert not np.array_equal(two[0][1], two[1][1])


def test_ids_contiguous_and_each_one_piece(two):
    for _, lab in two:
        k = lab.max()
        assert k > 30
        np.testing.assert_array_equal(np.unique(lab), np.arange(k + 1))
        # labelling same-valued 4-connected regions finds exactly one region per id
        assert sk_label(lab, connectivity=1, background=0).max() == k


def test_many_touching_and_some_one_pixel_gaps(two):
    for _, lab in two:
        touching = touching_pairs(lab)
        assert len(touching) >= 0.5 * lab.max()
        assert len(gap_pairs(lab)) >= 3


def test_intensity_statistics_plausible(two):
    for img, lab in two:
        cells, bg = img[lab > 0], img[lab == 0]
        assert 0.2 < (lab > 0).mean() < 0.8
        assert np.median(cells) > np.median(bg) + 0.2          # cells brighter than background
        assert bg.std() > 0.005                                 # noisy, not flat
        assert np.percentile(img, 99.8) == pytest.approx(1.0, abs=1e-3)
        assert -0.3 < img.min() and img.max() < 2.0
        # per-cell mean intensities vary (not one flat grey)
        means = np.bincount(lab.ravel(), img.ravel())[1:] / np.bincount(lab.ravel())[1:]
        assert means.std() / means.mean() > 0.1


def test_weight_map_of_synthetic_cells_has_separation_borders(two):
    from unetlab.weights import training_targets

    classes, w = training_targets(two[0][1])
    assert w.max() > 8                                          # touching cells → w0 term
    assert sk_label(classes == 1, connectivity=1).max() == two[0][1].max()


def test_touching_cells_samples():
    samples = touching_cells(2, 64, seed=0)
    assert len(samples) == 2
    s = samples[0]
    assert s.image.shape == (1, 64, 64) and s.image.dtype == np.float32
    assert s.instances.shape == (64, 64) and s.instances.dtype == np.int32
    assert s.name == "synthetic-s0-000" and s.path is None
    assert samples[1].name != s.name


def test_bad_size():
    with pytest.raises(ValueError):
        touching_cells_arrays(1, 4)


@pytest.mark.slow
def test_large_image():
    (img, lab), = touching_cells_arrays(1, 2048, seed=0)
    assert img.shape == (2048, 2048) and lab.max() > 3000
