"""2-D Gaussian fits of lesions: the fit itself, positional uncertainty and probability maps,
and sizes from Gaussian widths in mm."""
