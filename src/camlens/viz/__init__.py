"""Visualisation of class activation maps: normalise, resize, colour, overlay, lay out, save;
feature-map grids.

Pure numpy and matplotlib (through the Agg canvas, never pyplot); matplotlib and PIL are
imported only by the functions that use them, so importing this package stays cheap.
"""

from .color import colorize, draw_boxes, overlay, to_rgb_uint8
from .figures import figure_to_png_bytes, panel, save_png, write_atomic
from .grid import (RANKS, STYLES, dead_channels, feature_grid, feature_grid_array, feature_overview,
                   image_grid, rank_channels, standardize)
from .._image import NORMALIZE_MODES, normalize, resize_bilinear
from .encode import data_uri

__all__ = [
    "NORMALIZE_MODES",
    "normalize",
    "resize_bilinear",
    "to_rgb_uint8",
    "colorize",
    "overlay",
    "draw_boxes",
    "panel",
    "figure_to_png_bytes",
    "save_png",
    "write_atomic",
    "RANKS",
    "STYLES",
    "rank_channels",
    "dead_channels",
    "standardize",
    "feature_grid",
    "feature_grid_array",
    "feature_overview",
    "image_grid",
    "data_uri",
]
