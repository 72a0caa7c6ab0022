"""Numba kernels of the ISBI 2012 warping error (``unetlab.metrics``).

Internal module. The public entry points are :func:`unetlab.metrics.isbi2012` and
:func:`unetlab.metrics.warping_classes`.

What is fast here, compared with the straightforward algorithm of the organisers' Fiji code
(tests/reference/naive_metrics.py):

* the (4,8) simple-point test is one look-up in a 256-entry table indexed by the 8 neighbours;
* a warping sweep is one compiled loop over the confidence-sorted mismatch list;
* the ``|U| = 2`` classification case ("does removing this cell pixel split its cell?") floods
  only the (2·radius+1)² window around the pixel, and only from the pixel's own neighbours,
  instead of relabelling a copied window or the whole slice per pixel.

All arrays are 2-D, indexed ``[y, x]``. Codes of the mismatch classes follow Fiji's flags.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# Fiji WarpingError flags
WARP_MERGE = 0x1
WARP_SPLIT = 0x2
HOLE_ADDITION = 0x4
OBJECT_DELETION = 0x8
OBJECT_ADDITION = 0x10
HOLE_DELETION = 0x20

#: (dy, dx) of the 8 neighbours; bit k of a configuration code is neighbour k
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_DY = np.array([d[0] for d in NEIGHBOURS], dtype=np.int64)
_DX = np.array([d[1] for d in NEIGHBOURS], dtype=np.int64)


def _components(cells: set, connectivity: int) -> list:
    """Connected components of a set of (dy, dx) positions (4- or 8-adjacency); tiny sets only."""
    left, comps = set(cells), []
    while left:
        stack = [left.pop()]
        comp = set(stack)
        while stack:
            y, x = stack.pop()
            for q in list(left):
                dy, dx = abs(q[0] - y), abs(q[1] - x)
                if (dy + dx == 1) or (connectivity == 8 and dy == 1 and dx == 1):
                    left.discard(q)
                    comp.add(q)
                    stack.append(q)
        comps.append(comp)
    return comps


def simple_point_table() -> np.ndarray:
    """(256,) bool: ``table[code]`` is True iff the centre is a (4,8)-simple point.

    ``code`` = Σ 2^k over the cell neighbours k (order :data:`NEIGHBOURS`). Cells are
    4-connected, membrane 8-connected: simple iff exactly one 4-component of cell
    neighbours touches the centre 4-adjacently and the membrane neighbours form exactly one
    8-component (centre excluded from both). Does not depend on the centre's own value.
    """
    table = np.zeros(256, dtype=np.bool_)
    edge = {(-1, 0), (0, -1), (0, 1), (1, 0)}
    for code in range(256):
        cell = {NEIGHBOURS[k] for k in range(8) if code >> k & 1}
        memb = {NEIGHBOURS[k] for k in range(8) if not code >> k & 1}
        n_cell = sum(1 for c in _components(cell, 4) if c & edge)
        n_memb = len(_components(memb, 8))
        table[code] = n_cell == 1 and n_memb == 1
    return table


SIMPLE = simple_point_table()


@njit(cache=True, nogil=True)
def warp_slice(source, prob, th, table):
    """Warp the binary ``source`` (GT, uint8 0/1, (H, W)) onto ``prob > th`` by simple points.

    Fiji's ``simplePointWarp2d``: the slice is padded by one ring of membrane;
    each sweep lists the mismatches x-major, stable-sorts them by float32(|prob − th|)
    descending and flips each one that is simple in the *current* labels; sweeps repeat until
    one flips nothing. ``prob`` is float32, compared in float64.

    Returns ``(warped (H, W) uint8, ys, xs)``: the warped labels and the remaining mismatches.
    """
    h, w = source.shape
    lab = np.zeros((h + 2, w + 2), dtype=np.uint8)
    tgt = np.zeros((h + 2, w + 2), dtype=np.uint8)
    key = np.zeros((h + 2, w + 2), dtype=np.float32)
    for y in range(h):
        for x in range(w):
            lab[y + 1, x + 1] = 1 if source[y, x] != 0 else 0
            v = np.float64(prob[y, x])
            tgt[y + 1, x + 1] = 1 if v > th else 0
            key[y + 1, x + 1] = np.float32(abs(v - th))
    # Flipping a mismatch makes it match and changes no other pixel, so every sweep's mismatch
    # list is the first list minus the pixels flipped so far, and (keys being fixed) its stable
    # sort is the first sorted list filtered: sort once, then sweep over the survivors.
    ys = np.empty(h * w, dtype=np.int64)
    xs = np.empty(h * w, dtype=np.int64)
    m = 0
    for x in range(1, w + 1):          # x-major, like Fiji
        for y in range(1, h + 1):
            if lab[y, x] != tgt[y, x]:
                ys[m] = y
                xs[m] = x
                m += 1
    keys = np.empty(m, dtype=np.float32)
    for i in range(m):
        keys[i] = -key[ys[i], xs[i]]
    order = np.argsort(keys, kind="mergesort")
    sy = ys[order].copy()
    sx = xs[order].copy()
    while m > 0:
        kept = 0
        for i in range(m):
            y = sy[i]
            x = sx[i]
            code = 0
            for k in range(8):
                if lab[y + _DY[k], x + _DX[k]] != 0:
                    code |= 1 << k
            if table[code]:
                lab[y, x] = 1 - lab[y, x]
            else:
                sy[kept] = y
                sx[kept] = x
                kept += 1
        if kept == m:
            break
        m = kept
    ys = sy[:m]
    xs = sx[:m]
    out = lab[1:h + 1, 1:w + 1].copy()
    return out, ys - 1, xs - 1


@njit(cache=True, nogil=True)
def _splits_cell(binary, y, x, y0, y1, x0, x1, outside_is_zero, stamp, base, queue):
    """|U| = 2 case for the cell pixel (y, x): with it set to membrane, do its 8 neighbours
    show more than two distinct labels (membrane 0 counted) after 4-CC relabelling of the window
    [y0, y1] × [x0, x1]? Floods only from the neighbours, inside the window.

    ``stamp`` (H, W) int64 is scratch marking visited pixels with ids > ``base``; returns
    ``(is_split, new_base)``.
    """
    h, w = binary.shape
    has_zero = False
    ncomp = 0
    cur = base
    for k in range(8):
        ny = y + _DY[k]
        nx = x + _DX[k]
        inside = 0 <= ny < h and 0 <= nx < w
        if not inside:
            if outside_is_zero:
                has_zero = True
            continue
        if ny < y0 or ny > y1 or nx < x0 or nx > x1:  # cannot happen for radius >= 1
            continue
        if binary[ny, nx] == 0:
            has_zero = True
            continue
        if stamp[ny, nx] > base:
            continue  # already reached from an earlier neighbour: same component
        ncomp += 1
        cur += 1
        # flood this neighbour's 4-component inside the window, centre excluded
        stamp[ny, nx] = cur
        queue[0] = ny * w + nx
        head, tail = 0, 1
        while head < tail:
            py, px = divmod(queue[head], w)
            head += 1
            for d in range(4):
                if d == 0:
                    qy, qx = py - 1, px
                elif d == 1:
                    qy, qx = py + 1, px
                elif d == 2:
                    qy, qx = py, px - 1
                else:
                    qy, qx = py, px + 1
                if qy < y0 or qy > y1 or qx < x0 or qx > x1:
                    continue
                if qy == y and qx == x:
                    continue
                if binary[qy, qx] == 0 or stamp[qy, qx] > base:
                    continue
                stamp[qy, qx] = cur
                queue[tail] = qy * w + qx
                tail += 1
    nunique = ncomp + (1 if has_zero else 0)
    return nunique > 2, cur


@njit(cache=True, nogil=True)
def classify_mismatches(warped, comp, ys, xs, radius):
    """Fiji's ``classifyMismatches2d`` for the mismatches (ys, xs) of a warped slice.

    ``warped`` (H, W) uint8 0/1 and ``comp`` (H, W) int 4-CC labels of ``warped`` (all 0 when
    ``warped`` is entirely cell, Fiji's ``convertToByte`` quirk). Returns (m,) int64 flags.
    """
    h, w = warped.shape
    m = ys.shape[0]
    out = np.zeros(m, dtype=np.int64)
    whole = radius < 1 or radius > w or radius > h
    stamp = np.zeros((h, w), dtype=np.int64)
    queue = np.empty(h * w, dtype=np.int64)
    base = 0
    ids = np.empty(8, dtype=np.int64)
    for i in range(m):
        y = ys[i]
        x = xs[i]
        nu = 0
        for k in range(8):
            ny = y + _DY[k]
            nx = x + _DX[k]
            if 0 <= ny < h and 0 <= nx < w:
                v = comp[ny, nx]
                seen = False
                for j in range(nu):
                    if ids[j] == v:
                        seen = True
                        break
                if not seen:
                    ids[nu] = v
                    nu += 1
        centre = comp[y, x]
        if nu == 1 and ids[0] == 0:
            out[i] = OBJECT_DELETION if centre != 0 else OBJECT_ADDITION
        elif nu == 1:
            out[i] = HOLE_ADDITION if centre != 0 else HOLE_DELETION
        elif nu == 2:
            if centre == 0:
                out[i] = HOLE_ADDITION
            else:
                if whole:
                    y0, y1, x0, x1 = 0, h - 1, 0, w - 1
                else:
                    y0 = max(y - radius, 0)
                    y1 = min(y + radius, h - 1)
                    x0 = max(x - radius, 0)
                    x1 = min(x + radius, w - 1)
                split, base = _splits_cell(warped, y, x, y0, y1, x0, x1, not whole,
                                           stamp, base, queue)
                out[i] = WARP_SPLIT if split else HOLE_DELETION
        else:
            out[i] = WARP_MERGE if centre == 0 else WARP_SPLIT
    return out


# ------------------------------------------------------------------------------------------
# border thinning for V_rand / V_info
# ------------------------------------------------------------------------------------------
_MASK = -2
_WSHED = 0
_INIT = -1
_INQUEUE = -3
# Fiji Neighborhood2DC4 order: left, up, right, down (as (dy, dx))
_N4Y = np.array([0, -1, 0, 1], dtype=np.int64)
_N4X = np.array([-1, 0, 1, 0], dtype=np.int64)


@njit(cache=True, nogil=True)
def _flood_level(lab, ys, xs, queue, current, flag):
    """One grey level of Fiji's ``WatershedTransform2D`` (Soille–Vincent flooding, 4-conn.)."""
    h, w = lab.shape
    m = ys.shape[0]
    head = 0
    tail = 0
    for k in range(m):
        y = ys[k]
        x = xs[k]
        lab[y, x] = _MASK
        for d in range(4):
            v = y + _N4Y[d]
            u = x + _N4X[d]
            if 0 <= v < h and 0 <= u < w and lab[v, u] >= _WSHED:
                queue[tail] = y * w + x
                tail += 1
                lab[y, x] = _INQUEUE
                break
    while head < tail:
        y, x = divmod(queue[head], w)
        head += 1
        for d in range(4):
            v = y + _N4Y[d]
            u = x + _N4X[d]
            if not (0 <= v < h and 0 <= u < w):
                continue
            lu = lab[v, u]
            if lu > 0:
                if lab[y, x] == _INQUEUE or (lab[y, x] == _WSHED and flag):
                    lab[y, x] = lu
                elif lab[y, x] > 0 and lab[y, x] != lu:
                    lab[y, x] = _WSHED
                    flag = False
            elif lu == _WSHED:
                if lab[y, x] == _INQUEUE:
                    lab[y, x] = _WSHED
                    flag = True
            elif lu == _MASK:
                lab[v, u] = _INQUEUE
                queue[tail] = v * w + u
                tail += 1
    for k in range(m):  # new minima at this level
        y = ys[k]
        x = xs[k]
        if lab[y, x] == _MASK:
            current += 1
            lab[y, x] = current
            _label_component(lab, y, x, current, queue)
    return current, flag


@njit(cache=True, nogil=True)
def _label_component(lab, y, x, current, queue):
    """Give the 4-connected _MASK pixels reachable from (y, x) the label ``current`` (a stack:
    the order does not change which pixels are reached)."""
    h, w = lab.shape
    queue[0] = y * w + x
    top = 1
    while top > 0:
        top -= 1
        py, px = divmod(queue[top], w)
        for d in range(4):
            v = py + _N4Y[d]
            u = px + _N4X[d]
            if 0 <= v < h and 0 <= u < w and lab[v, u] == _MASK:
                lab[v, u] = current
                queue[top] = v * w + u
                top += 1


@njit(cache=True, nogil=True)
def thin_borders(cell):
    """Border thinning of a binary proposal (H, W) (nonzero = cell) → int64 labels, dams = 0.

    Fiji's ``WatershedTransform2D`` on the inverted binary map (cells level 0, membrane 255):
    each 4-component of cells is a basin, membrane pixels are flooded from the basins (pixel
    order x-major per level, neighbours left, up, right, down, the original ``flag`` rule),
    pixels between basins become dams (0); membrane regions reached by no basin become basins.
    """
    h, w = cell.shape
    n0 = 0
    for y in range(h):
        for x in range(w):
            if cell[y, x] != 0:
                n0 += 1
    y0 = np.empty(n0, dtype=np.int64)
    x0 = np.empty(n0, dtype=np.int64)
    y1 = np.empty(h * w - n0, dtype=np.int64)
    x1 = np.empty(h * w - n0, dtype=np.int64)
    a = 0
    b = 0
    for x in range(w):
        for y in range(h):
            if cell[y, x] != 0:
                y0[a] = y
                x0[a] = x
                a += 1
            else:
                y1[b] = y
                x1[b] = x
                b += 1
    lab = np.full((h, w), _INIT, dtype=np.int64)
    queue = np.empty(h * w, dtype=np.int64)
    current = 0
    flag = False
    if n0 > 0:
        current, flag = _flood_level(lab, y0, x0, queue, current, flag)
    if h * w - n0 > 0:
        current, flag = _flood_level(lab, y1, x1, queue, current, flag)
    for y in range(h):
        for x in range(w):
            if lab[y, x] < 0:
                lab[y, x] = 0
    return lab
