"""Raster input and output. Knows nothing of torch or Ray: numpy arrays and rasterio in, files out."""

from geoseg.io.raster import PadMode, SceneInfo, open_scene, read_tile

__all__ = ["PadMode", "SceneInfo", "open_scene", "read_tile"]
