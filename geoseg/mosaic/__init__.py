"""From finished predict jobs to one map of a place and a period (see :mod:`geoseg.mosaic.job`)."""
