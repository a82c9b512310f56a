"""Layer 1, core: tensor kernels, masks, token rules, the attention stacks, file writing and the error hierarchy.

Depends on torch and transformers only; every other layer builds on it.
"""
