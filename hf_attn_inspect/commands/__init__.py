"""Sub-commands of the hf-attn-inspect command line, one module each."""
