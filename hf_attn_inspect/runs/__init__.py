"""Layer 4, runs: the sharded run loop and the engines built on it; they return data, never draw."""
