"""``python -m hf_attn_inspect``: the same program as the ``hf-attn-inspect`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
