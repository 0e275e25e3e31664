"""Model backends: the only code that knows a model library (TransformerLens today). The engine
asks a backend for hook names, weights and norms, never the model itself."""
