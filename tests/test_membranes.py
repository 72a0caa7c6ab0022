"""``membranes.close_membranes``: gaps in a membrane map are closed, a cell split by a faint
dip is merged back, every other pixel keeps its probability."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetlab.errors import UnetlabError
from unetlab.membranes import close_membranes, region_boundaries


def _two_cells_with_a_gap(gap: int = 3) -> np.ndarray:
    """P(cell) of two 30×30 cells separated by a vertical membrane with a ``gap`` px hole."""
    p = np.full((40, 64), 0.95, np.float32)
    p[:, 31:33] = 0.05                      # the membrane between them
    p[18:18 + gap, 31:33] = 0.9             # ... with a gap the network missed
    p[0, :] = p[-1, :] = p[:, 0] = p[:, -1] = 0.05
    return ndi.gaussian_filter(p, 0.7)


def _cells(prob, th=0.5) -> int:
    return ndi.label(prob > th)[1]


def test_a_gap_is_closed_and_other_pixels_keep_their_value():
    p = _two_cells_with_a_gap()
    assert _cells(p) == 1                   # thresholding merges the two cells
    q = close_membranes(p, sigma=1.0, h=0.05, merge=0.0)
    assert _cells(q) == 2                   # closed: two cells at every threshold
    changed = q != p
    assert (q[changed] == 0).all()          # only boundary pixels change, to P(cell) = 0
    assert changed.sum() < 0.1 * p.size


def test_a_faint_dip_inside_a_cell_is_merged_back():
    p = np.full((40, 40), 0.95, np.float32)
    p[0, :] = p[-1, :] = p[:, 0] = p[:, -1] = 0.0
    p[:, 19:21] = 0.8                       # a faint line: membrane probability 0.2 only
    p = ndi.gaussian_filter(p, 0.7)
    split = close_membranes(p, sigma=0.0, h=0.05, merge=0.0)
    assert _cells(split) == 2               # without merging the dip splits the cell
    merged = close_membranes(p, sigma=0.0, h=0.05, merge=0.5)
    assert _cells(merged) == 1              # its mean membrane probability is < 0.5: joined


def test_stack_is_slice_by_slice_and_float32():
    p = np.stack([_two_cells_with_a_gap(2), _two_cells_with_a_gap(4)])
    q = close_membranes(p)
    assert q.dtype == np.float32 and q.shape == p.shape
    for s in range(2):
        np.testing.assert_array_equal(q[s], close_membranes(p[s]))


def test_region_boundaries_matches_a_loop():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (12, 9))
    ref = np.zeros(lab.shape, bool)
    for y in range(12):
        for x in range(9):
            ref[y, x] = (x + 1 < 9 and lab[y, x] != lab[y, x + 1]) or (
                y + 1 < 12 and lab[y, x] != lab[y + 1, x])
    np.testing.assert_array_equal(region_boundaries(lab), ref)


@pytest.mark.parametrize("prob, kw, needle", [
    (np.zeros((2, 2, 2, 2)), {}, "shape"),
    (np.full((8, 8), 1.5), {}, "in [0, 1]"),
    (np.full((8, 8), 0.5), {"h": -1}, "h must be"),
])
def test_bad_input_is_a_clear_error(prob, kw, needle):
    with pytest.raises(UnetlabError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        close_membranes(prob, **kw)


def test_predict_close_membranes_writes_the_closed_map(tmp_path, capsys):
    import tifffile
    import torch

    from unetlab.checkpoint import save_model
    from unetlab.cli import main
    from unetlab.model import UNet
    from unetlab.writers import write_png

    torch.manual_seed(0)
    save_model(UNet(width=2, depth=1), tmp_path / "m.pt")
    save_model(UNet(width=2, depth=1, num_classes=3), tmp_path / "m3.pt")
    rng = np.random.default_rng(0)
    write_png(tmp_path / "a.png", (rng.random((48, 40)) * 255).astype(np.uint8))
    common = [str(tmp_path / "a.png"), "--threads", "1", "--quiet", "--no-overlay",
              "--precision", "fp32"]
    assert main(["predict", str(tmp_path / "m.pt"), *common, "--out", str(tmp_path / "raw")]) == 0
    assert main(["predict", str(tmp_path / "m.pt"), *common, "--out", str(tmp_path / "c"),
                 "--close-membranes"]) == 0
    raw = tifffile.imread(tmp_path / "raw" / "a_prob.tif")
    closed = tifffile.imread(tmp_path / "c" / "a_prob.tif")
    np.testing.assert_array_equal(closed, close_membranes(raw))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.pt"), *common, "--out", str(tmp_path / "p"),
                 "--close-membranes", "--format", "png"]) == 2
    assert "--close-membranes" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "m3.pt"), *common, "--out", str(tmp_path / "k"),
                 "--close-membranes"]) == 2
    assert "2-class" in capsys.readouterr().err
