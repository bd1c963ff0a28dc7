"""Class rasters to polygons: polygonize in chunks, merge seams exactly, keep a partition, export."""
