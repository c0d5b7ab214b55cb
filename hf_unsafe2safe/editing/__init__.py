"""Stage 2: rewrite only the sensitive regions found by Stage 1."""

from .lite import RegionEditor

__all__ = ["RegionEditor"]
