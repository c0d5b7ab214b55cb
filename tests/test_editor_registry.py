"""The diffusion editors' registry: every name of ``config.EDITORS`` maps to a ``DiffusionEditor`` subclass, and
building one imports that editor's module only (no checkpoint is loaded here)."""

import json
import subprocess
import sys

import pytest

from hf_unsafe2safe.config import EDITORS
from hf_unsafe2safe.editing.base import DiffusionEditor
from hf_unsafe2safe.editing.registry import EDITOR_CLASSES, editor_class


def test_every_editor_name_maps_to_a_diffusion_editor_of_that_name():
    assert tuple(EDITOR_CLASSES) == EDITORS
    for name in EDITORS:
        cls = editor_class(name)
        assert issubclass(cls, DiffusionEditor) and cls.name == name


def test_siblings_share_the_base_not_each_other():
    from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor

    for name in EDITORS:
        if name != "instruct-pix2pix":
            assert not issubclass(editor_class(name), InstructPix2PixEditor), name
    flags = {name: (editor_class(name).uses_mask, editor_class(name).uses_source_prompt) for name in EDITORS}
    assert flags == {"instruct-pix2pix": (False, False), "inpaint": (True, False), "flowedit": (False, True), "kontext": (False, False), "qwen-image-edit": (False, False)}


def test_an_unknown_name_is_named():
    with pytest.raises(ValueError, match="'nope' for `diffusion.name`"):
        editor_class("nope")


def test_the_registry_imports_only_the_chosen_editor():
    code = (
        "import json, sys\n"
        "from hf_unsafe2safe.editing.registry import editor_class\n"
        "editor_class('kontext')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hf_unsafe2safe.editing.'))))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert "hf_unsafe2safe.editing.kontext" in loaded
    others = ("instruct_pix2pix", "inpaint", "flowedit", "qwen_image_edit", "safe_attention")
    assert not [m for m in loaded if m.rsplit(".", 1)[1] in others]
