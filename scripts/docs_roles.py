"""MkDocs hook: the docstrings' Sphinx roles read as plain code on the API reference pages.

The package's docstrings name other objects the Sphinx way (``:class:`AttentionResult```,
``:func:`~hf_attn_inspect.stats.metrics.reduce_rows```). mkdocstrings renders them as the role's text
followed by code; this hook drops the role and, as Sphinx does for a leading ``~``, keeps only the last
component of the dotted name, so the reader sees ``AttentionResult`` and ``reduce_rows``.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:attr|class|data|func|meth|mod|exc|obj|const):<code>(~?)([^<]*)</code>")


def strip_roles(html: str) -> str:
    """``html`` with every ``:role:<code>name</code>`` made ``<code>name</code>`` (``~a.b.c`` -> ``c``)."""
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: applied to each page's HTML after its Markdown is rendered."""
    return strip_roles(html)
