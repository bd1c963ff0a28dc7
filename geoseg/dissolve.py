"""Exact dissolve of 4-connected polygon pieces that chunk seams cut apart, on integer pixel coordinates.

Two pieces of one region that a seam split share unit edges along the seam, and with every exterior oriented
the same way they run along them in opposite directions. Cancelling those edge pairs and relinking what is
left gives the region's boundary exactly, in time linear in the pieces' exterior vertices: no GEOS union,
which took minutes on a background region with thousands of holes spanning many chunks. Holes never have an
edge on a seam (a chunk's own boundary cannot lie inside a hole), so they pass through untouched.

Where the relinked boundary passes a vertex twice (the region touches itself diagonally), the rings are
chosen as GDAL chooses them for a whole raster: an outer ring and holes that may touch it at a point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely


@dataclass(frozen=True)
class Seams:
    """Internal chunk seams of a raster: the columns and rows where chunks meet."""

    columns: np.ndarray
    rows: np.ndarray
    width: int
    height: int

    @classmethod
    def of(cls, width: int, height: int, chunk: int) -> Seams:
        return cls(np.arange(chunk, width, chunk), np.arange(chunk, height, chunk), width, height)


@dataclass
class SeamEdges:
    """Directed exterior edges of seam pieces; edges lying on a seam are cut to unit length."""

    start: np.ndarray  # [n, 2] int64 pixel corners
    end: np.ndarray
    piece: np.ndarray  # index of the piece each edge belongs to
    seam_key: np.ndarray  # an id of the undirected unit seam edge, -1 for edges off the seams


def exterior_edges(geoms: np.ndarray, seams: Seams) -> SeamEdges:
    """Edges of every piece's exterior ring (counter-clockwise in pixel coordinates), seam edges unit-length."""
    rings = shapely.get_exterior_ring(shapely.orient_polygons(geoms, exterior_cw=False))
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    coords = np.rint(coords).astype(np.int64)
    consecutive = ring_of[1:] == ring_of[:-1]  # closed rings: the last vertex repeats the first
    start, end, piece = coords[:-1][consecutive], coords[1:][consecutive], ring_of[:-1][consecutive]
    vertical = start[:, 0] == end[:, 0]
    on_seam = (vertical & np.isin(start[:, 0], seams.columns)) | (~vertical & np.isin(start[:, 1], seams.rows))
    length = np.abs(end - start).sum(axis=1)
    repeats = np.where(on_seam, length, 1)
    first = np.repeat(np.cumsum(repeats) - repeats, repeats)
    step = np.arange(len(first)) - first
    direction = np.sign(end - start)
    source = np.repeat(np.arange(len(start)), repeats)
    unit = on_seam[source]
    new_start = start[source] + step[:, None] * direction[source]
    new_end = np.where(unit[:, None], new_start + direction[source], end[source])
    new_piece = piece[source]
    size = max(seams.width, seams.height) + 2
    low = np.minimum(new_start, new_end)
    is_vertical = new_start[:, 0] == new_end[:, 0]
    key = np.where(is_vertical, (low[:, 0] * size + low[:, 1]) * 2, (low[:, 1] * size + low[:, 0]) * 2 + 1)
    return SeamEdges(new_start, new_end, new_piece, np.where(unit, key, -1))


def shared_seam_pairs(edges: SeamEdges, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of same-class pieces that share a unit seam edge, and which edges cancel.

    Returns (piece a, piece b, cancelled edge mask). A unit edge is shared by at most two pieces (one on each
    side of the seam); pieces of different classes sharing one stay apart and keep the edge.
    """
    unit = np.flatnonzero(edges.seam_key >= 0)
    order = unit[np.argsort(edges.seam_key[unit], kind="stable")]
    keys = edges.seam_key[order]
    twin = np.flatnonzero(keys[1:] == keys[:-1])
    a, b = order[twin], order[twin + 1]
    same = classes[edges.piece[a]] == classes[edges.piece[b]]
    a, b = a[same], b[same]
    cancelled = np.zeros(len(edges.piece), dtype=bool)
    cancelled[a] = cancelled[b] = True
    return edges.piece[a], edges.piece[b], cancelled


def _turn_rank(incoming: np.ndarray, outgoing: np.ndarray) -> int:
    """Right turn 0, straight 1, left 2.

    Where a region touches itself diagonally, its counter-clockwise boundary passes the vertex twice. Turning
    right hugs the *outside* there, so the outer ring and the hole it pinches off stay two rings that touch at
    one point (valid OGC, and what GDAL emits for a whole raster); turning left would make one ring that
    touches itself (invalid).
    """
    cross = int(incoming[0] * outgoing[1] - incoming[1] * outgoing[0])
    return 0 if cross < 0 else 1 if cross == 0 else 2


def relink(edges: SeamEdges, alive: np.ndarray, region: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Follow the surviving edges of each region into closed rings.

    Args:
        edges: all seam-piece exterior edges.
        alive: edges that did not cancel.
        region: the region id of each edge (its piece's connected component).

    Returns:
        The rings (closed ``[k, 2]`` vertex arrays) and each ring's region.
    """
    ids = np.flatnonzero(alive)
    size = int(max(edges.start.max(initial=0), edges.end.max(initial=0))) + 2
    vertex_start = (region[ids] * size + edges.start[ids, 0]) * size + edges.start[ids, 1]
    vertex_end = (region[ids] * size + edges.end[ids, 0]) * size + edges.end[ids, 1]
    order = np.argsort(vertex_start, kind="stable")
    sorted_start = vertex_start[order]
    lo = np.searchsorted(sorted_start, vertex_end, side="left")
    hi = np.searchsorted(sorted_start, vertex_end, side="right")
    if np.any(hi == lo):
        raise RuntimeError("dissolve: a seam ring does not close (pieces are not on one pixel grid)")
    successor = order[lo].copy()  # positions in ids
    for k in np.flatnonzero(hi - lo > 1).tolist():
        candidates = order[lo[k] : hi[k]]
        incoming = edges.end[ids[k]] - edges.start[ids[k]]
        ranks = [_turn_rank(incoming, edges.end[ids[c]] - edges.start[ids[c]]) for c in candidates]
        successor[k] = candidates[int(np.argmin(ranks))]
    rings, ring_regions = [], []
    visited = np.zeros(len(ids), dtype=bool)
    succ = successor.tolist()
    for k0 in range(len(ids)):
        if visited[k0]:
            continue
        cycle = []
        k = k0
        while not visited[k]:
            visited[k] = True
            cycle.append(k)
            k = succ[k]
        if k != k0:  # entered another ring's cycle: two edges chose the same successor
            raise RuntimeError("dissolve: seam rings cross")
        vertices = edges.start[ids[cycle]]
        rings.append(np.vstack([vertices, vertices[:1]]))
        ring_regions.append(int(region[ids[k0]]))
    return rings, np.asarray(ring_regions, dtype=np.int64)


def signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2
