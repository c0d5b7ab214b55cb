"""hf_unsafe2safe: Unsafe2Safe image anonymization as a Hugging Face ``datasets`` transform.

Importing the package is cheap: heavy libraries (onnxruntime, OpenCV, datasets, torch) load on first use.
"""

from .version import __version__

_LAZY = {
    "Unsafe2Safe": ("transform", "Unsafe2Safe"),
    "PipelineConfig": ("config", "PipelineConfig"),
    "LiteInspectorConfig": ("config", "LiteInspectorConfig"),
    "LiteEditorConfig": ("config", "LiteEditorConfig"),
    "anonymize_dataset": ("pipeline", "anonymize_dataset"),
    "anonymize_to_disk": ("pipeline", "anonymize_to_disk"),
    "summarize": ("pipeline", "summarize"),
    "load_source": ("sources", "load_source"),
    "write_preview": ("preview", "write_preview"),
    "publish": ("hub", "publish"),
    "publish_from_disk": ("hub", "publish_from_disk"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
