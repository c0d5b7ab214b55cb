"""Evaluation suite: how private, how faithful, how honest and how useful an anonymization is (``evaluate``,
``EvalReport``, ``evaluate_utility``). Metrics are pluggable (``PairMetric``) and their models are config
(``FaceSimConfig``, ``LPIPSConfig``, ``VLMJudgeConfig``, ``DemographicsConfig``, ``UtilityConfig``)."""

from .base import Pair, PairMetric
from .cheating import LPIPSConfig
from .demographics import DemographicsConfig
from .judge import VLMJudgeConfig
from .privacy import FaceSimConfig
from .report import GROUPS, METRICS, EvalReport, evaluate, flag_quality
from .utility import UtilityConfig, evaluate_utility

__all__ = [
    "GROUPS", "METRICS", "DemographicsConfig", "EvalReport", "FaceSimConfig", "LPIPSConfig", "Pair", "PairMetric", "UtilityConfig", "VLMJudgeConfig",
    "evaluate", "evaluate_utility", "flag_quality",
]
