"""Engine: source activations, ablations and the patched forward pass shared by attribution and evaluation."""
