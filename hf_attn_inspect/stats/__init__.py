"""Layer 3, stats: per-row and per-head metrics, pattern classes, tables, aggregation, streaming statistics."""
