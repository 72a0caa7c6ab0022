"""Probabilities → instances (unetlab.postprocess) against scikit-image / scipy references."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.morphology import remove_small_objects

from unetlab.errors import UnetlabError
from unetlab.postprocess import relabel, remove_small, to_instances


def _disks(centres, r, shape=(80, 110)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i
    return lab


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_watershed_splits_touching_disks_components_merge():
    truth = _disks([(40, 35), (40, 70)], 19)          # overlapping: one blob with a neck
    fg = truth > 0
    p1 = np.where(fg, 0.9, 0.1).astype(np.float32)
    prob = np.stack([1 - p1, p1])
    comp = to_instances(prob, method="components")
    ws = to_instances(prob, method="watershed")
    assert comp.max() == 1
    assert ws.max() == 2 and ws.dtype == np.int32
    for k in (1, 2):                                   # each instance is one of the disks
        best = max(_iou(ws == k, truth == j) for j in (1, 2))
        assert best > 0.9
    assert ((ws > 0) == fg).all()


def test_components_match_skimage_and_min_size():
    rng = np.random.default_rng(0)
    mask = rng.random((60, 70)) > 0.6
    for conn in (1, 2):
        got = to_instances(mask, method="components", min_size=1, connectivity=conn)
        ref = sk_label(mask, connectivity=conn)
        assert got.max() == ref.max()
        # same partition: a one-to-one map between labels
        pairs = set(zip(got[mask].tolist(), ref[mask].tolist()))
        assert len(pairs) == ref.max()
        got5 = to_instances(mask, method="components", min_size=5, connectivity=conn)
        ref5 = remove_small_objects(ref, max_size=4) if _has_max_size() else \
            remove_small_objects(ref, min_size=5)
        assert ((got5 > 0) == (ref5 > 0)).all()
        assert got5.max() == len(np.unique(ref5)) - 1


def _has_max_size():
    import inspect
    return "max_size" in inspect.signature(remove_small_objects).parameters


def test_threshold_and_probability_map_inputs():
    p = np.zeros((20, 20), np.float32)
    p[2:8, 2:8] = 0.7
    p[12:18, 12:18] = 0.4
    assert to_instances(p, threshold=0.5, min_size=1).max() == 1
    assert to_instances(p, threshold=0.3, min_size=1).max() == 2
    assert to_instances(p, threshold=0.3, min_size=37).max() == 0       # both 36 px


def test_border_seeds_three_class():
    truth = _disks([(40, 35), (40, 70)], 19)
    fg = truth > 0
    from scipy import ndimage as ndi
    border = fg & ~ndi.binary_erosion(truth == 1, iterations=3) & ~ndi.binary_erosion(
        truth == 2, iterations=3)
    cell = fg & ~border
    prob = np.stack([~fg, cell, border]).astype(np.float32)
    lab = to_instances(prob, seeds="border", border_class=2, foreground_class=1,
                       threshold=0.5)
    # foreground here is the cell class only; seeds split it into the two disks
    assert lab.max() == 2
    with pytest.raises(UnetlabError):
        to_instances(prob, seeds="border")


def test_unseeded_component_kept_and_relabel():
    fg = np.zeros((30, 30), bool)
    fg[5:25, 5:25] = True
    fg[1, 28] = True                                  # tiny: no distance seed of dynamic >= h
    lab = to_instances(fg, min_size=1, h=2.0)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert lab[1, 28] == 1                            # raster order of first pixels
    x = np.array([[0, 7, 7], [3, 0, 9]])
    assert relabel(x).tolist() == [[0, 1, 1], [2, 0, 3]]
    assert remove_small(np.array([[1, 1, 2]]), 2).tolist() == [[1, 1, 0]]


def test_bad_arguments():
    with pytest.raises(UnetlabError, match="method"):
        to_instances(np.zeros((4, 4)), method="magic")
    with pytest.raises(UnetlabError, match="shape"):
        to_instances(np.zeros((2, 2, 4, 4)))
