"""Model converters: turn the packaged model files into portable runtime formats."""
