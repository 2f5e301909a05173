"""What may leave for a model (the boundary every model-bound request passes) and PS3.15
de-identified export."""
