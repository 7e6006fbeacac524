"""Text from data (class names, paths, dataset names, provenance) made safe for HTML and Markdown."""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["md", "esc"]

# Markdown's inline syntax: escaped so a class name like "*_x_*" shows as typed, not as emphasis
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>])")


def esc(value: Any) -> str:
    """``value`` as text for HTML: ``<``, ``>``, ``&`` and quotes become entities.

    Examples
    --------
    >>> esc('<img src=x onerror=alert(1)>')
    '&lt;img src=x onerror=alert(1)&gt;'
    """
    return html.escape(str(value), quote=True)


def md(value: Any) -> str:
    """``value`` as literal text inside Markdown that Panel renders to HTML.

    HTML is escaped first (Markdown passes raw HTML through), then Markdown's inline syntax is
    backslash-escaped, so the text shows exactly as stored and can never become markup.

    Examples
    --------
    >>> md('"><script>alert(1)</script>')
    '"&gt;&lt;script&gt;alert\\\\(1\\\\)&lt;/script&gt;'
    >>> md("a_b")
    'a\\\\_b'
    """
    # quotes are harmless in element text; escaping them would create '&#x27;' whose '#' Markdown
    # would then need escaped too. The entities left (&amp; &lt; &gt;) hold no Markdown syntax.
    text = html.escape(str(value), quote=False).replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", text)
