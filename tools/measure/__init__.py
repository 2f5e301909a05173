"""Lesion sizes as a reader measures them: the lesion segmented from its centre on the working
image, and its long and short axes (RECIST) from the mask."""
