"""Layer 2, capture: the registered attention function, probes, the inspector, batches and results."""
