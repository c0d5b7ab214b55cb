"""Evaluation suite: how private, how faithful, how honest an anonymization is (``evaluate``, ``EvalReport``)."""

from .report import EvalReport, evaluate, flag_quality

__all__ = ["EvalReport", "evaluate", "flag_quality"]
