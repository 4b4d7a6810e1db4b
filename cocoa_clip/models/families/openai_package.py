"""The OpenAI `clip` package, imported quietly, and its tokenizer's reading of a caption."""
from __future__ import annotations

import warnings


def clip_package():
    """The OpenAI `clip` package, imported without its pkg_resources deprecation notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip
        import clip.model
    return clip


def clip_text(text: str) -> str:
    """A caption as CLIP's tokenizer reads it: its text clean-up, white space collapsed, lower case."""
    tokenizer = clip_package().simple_tokenizer
    return tokenizer.whitespace_clean(tokenizer.basic_clean(text)).lower()
