"""Stage 1: find what is sensitive in an image and describe it (flag, regions, captions, instruction).

Stage 1 is an ordered list of components (``stage.STAGE1``), each adding to the inspections of a batch of decoded
images, under one fail-closed rule (``stage.run_inspection``):

- ``stage.py``: the component protocol, the batch, the registry and the rule;
- ``lite.py``: the embedded detectors (faces, text, metadata) with template captions (``detectors``);
- ``vlm.py``: the VLM inspector (``vlm``) and the LLM instruction writer (``instructor``), on transformers or vLLM;
- ``grounding.py``: an open-vocabulary detector's boxes for flagged rows (``grounder``);
- ``parsing.py``, ``templates.py``: model answers to inspections; template captions;
- ``base.py``: the plain dataclasses Stage 1 hands to Stage 2 (``hf_unsafe2safe.editing.stage``) and to the row.
"""

from .base import Inspection, Region

__all__ = ["Inspection", "Region"]
