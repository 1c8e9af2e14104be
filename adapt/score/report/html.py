"""report.html: report.md as one self-contained page, its plots embedded, so that it opens from
object storage or a mail attachment without the files beside it."""

from __future__ import annotations

import base64
import html

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f2f2f2; }
code { background: #f4f4f4; padding: 0 0.2rem; border-radius: 3px; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
"""


def render_html(markdown: str, title: str, images: dict[str, bytes]) -> str:
    """The page: `markdown` rendered (CommonMark with tables, raw HTML escaped), each image whose
    source is a key of `images` inlined as a PNG data URI."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = parser.render(markdown)
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        body = body.replace(f'src="{html.escape(name)}"', f'src="{uri}"')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )
