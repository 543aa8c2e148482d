"""genai_processors' name for :mod:`erlpy.content`, so that code written for it
(``from genai_processors import content_api``) reads ``from erlpy import content_api``
and gets the same classes."""

from .content import ContentStream, ProcessorPart, as_text

__all__ = ["ContentStream", "ProcessorPart", "as_text"]
