"""Raster input and output. Knows nothing of torch or Ray: numpy arrays and rasterio in, files out."""

from geoseg.io.raster import PadMode, SceneInfo, open_scene, read_tile
from geoseg.io.writer import ClassRasterWriter

__all__ = ["ClassRasterWriter", "PadMode", "SceneInfo", "open_scene", "read_tile"]
