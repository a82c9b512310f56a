"""Layer 5, checks: diagnosis and its findings, the chapter's debug functions, verify, planted faults."""
