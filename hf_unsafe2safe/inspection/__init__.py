"""Stage 1: find what is sensitive in an image and describe it (flag, regions, captions, instruction)."""

from .base import Inspection, Region

__all__ = ["Inspection", "Region"]
