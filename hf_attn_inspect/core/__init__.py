"""Layer 1, core: tensor kernels, masks, token rules, file writing and the error hierarchy.

Depends on torch and transformers only; every other layer builds on it.
"""
