"""Evaluation suite: how private, how faithful, how honest and how useful an anonymization is (``evaluate``,
``EvalReport``, ``evaluate_utility``)."""

from .report import EvalReport, evaluate, flag_quality
from .utility import UtilityConfig, evaluate_utility

__all__ = ["EvalReport", "UtilityConfig", "evaluate", "evaluate_utility", "flag_quality"]
