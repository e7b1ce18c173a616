"""The base model as an anchor set sees it: does a loaded model fit a set's manifest (loading itself:
lerpray/hf_models.py; the identity a set records: lerpray.anchors.format.model_identity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lerpray.anchors.format import AnchorSetError, Manifest, check_compatible, model_identity
from lerpray.hf_models import BUNDLED_MODEL, ModelLoadError, bundled_model_dir, load_base_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "BUNDLED_MODEL", "ModelLoadError", "ModelMismatchError", "bundled_model_dir", "check_model_fits", "load_base_model",
    "model_identity",
]


class ModelMismatchError(AnchorSetError):
    """An anchor set does not fit the base model (identity, module paths or shapes)."""


def check_model_fits(manifest: Manifest, model: PreTrainedModel) -> None:
    """Raise ModelMismatchError (an AnchorSetError) naming every identity field in which the model differs.

    Names and revisions are not compared (one model may be loaded from a hub id or a local folder); the
    architecture, sizes and parameter-shape checksum are (see lerpray.anchors.format.check_compatible).
    """
    try:
        check_compatible(manifest, model_identity(model, "the loaded model"))
    except AnchorSetError as err:
        raise ModelMismatchError(str(err)) from err
