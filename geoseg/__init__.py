"""geoseg: archive-scale semantic segmentation of GeoTIFFs with U-Nets on Ray."""

__version__ = "0.1.0"
