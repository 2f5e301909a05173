"""Pictures: one module per overlay layer (annotated image, heatmap, comparison, crops,
statistics) on a shared figure style, PNG encoding, and the image a vision model is sent."""
