"""Evaluation suite: how private, how faithful, how honest and how useful an anonymization is (``evaluate``,
``EvalReport``, ``evaluate_utility``). Metrics are pluggable (``PairMetric``) and their models are config
(``FaceSimConfig``, ``LPIPSConfig``, ``VLMJudgeConfig``, ``DemographicsConfig``, ``UtilityConfig``).

Where each piece lives:

- ``base``: the metric protocol (``Pair``, ``PairMetric``) and how a metric names its models or says it is
  unavailable;
- ``stats``: the statistics every metric shares: pairing the two datasets (``align``), bootstrap, Wilson and
  design-effect intervals, entropies, the half-subset intervals of FID / KID;
- metrics per dimension: ``privacy`` (FaceSim, TextSim) on the computations of ``metrics`` (face embedders,
  OCR, SSIM, perceptual hash), ``demographics`` (age, gender, race), ``judge`` (the VLM judge, VLMScore),
  ``cheating`` (copies, over-edits, LPIPS on the network of ``lpips``), ``quality`` (CLIP, FID / KID),
  ``utility`` (the same classifier trained on original vs anonymized data);
- ``report``: ``evaluate``, ``EvalReport`` and its files, metric names and groups, ``flag_quality``;
- ``checks``: the report's warnings (over-edit, copy, privacy leak, unmeasured dimension) and their thresholds.
"""

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
