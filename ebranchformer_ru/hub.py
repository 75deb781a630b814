"""Loading a model folder or Hub repo for the scripts, with errors that name what is wrong.

Transformers reports a missing local folder as an invalid Hub id ("Repo id must be in the form ...") and a
damaged weights file as a bare `SafetensorError`; these helpers say which path failed and what to do. Code
from a folder runs only with `trust_remote_code=True`: the model types of this package load without it
(they are registered with the Auto classes when the package is imported).
"""

from pathlib import Path

from transformers import AutoModelForCTC, AutoProcessor

import modeling_ebranchformer  # noqa: F401  (registers this package's model types: they load without remote code)

from .errors import Error


class ModelLoadError(Error, ValueError):
    pass


def _load(loader, path, trust_remote_code, what, **kwargs):
    from safetensors import SafetensorError

    try:
        return loader.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except SafetensorError as error:
        raise ModelLoadError(
            f"{Path(path) / 'model.safetensors'} cannot be read ({error}): the file is corrupt or "
            "truncated; copy or convert it again"
        ) from None
    except (OSError, ValueError) as error:  # HFValidationError, a missing file or repo, an unknown type
        if not Path(path).exists():
            raise ModelLoadError(
                f"no model folder {path} here, and it is not a Hub model that can be loaded either ({error})"
            ) from None
        if "trust_remote_code" in str(error):
            raise ModelLoadError(
                f"{path} holds a model type that this package does not provide, defined by Python code in the "
                "folder or repo; pass --trust_remote_code true only if you trust that code"
            ) from None
        raise ModelLoadError(f"{path}: cannot load the {what} ({error})") from None


def load_ctc_model(path, trust_remote_code: bool = False, **kwargs):
    """`AutoModelForCTC.from_pretrained` with clear errors (see the module docstring)."""
    return _load(AutoModelForCTC, path, trust_remote_code, "model", **kwargs)


def load_processor(path, trust_remote_code: bool = False, language_model: bool = True):
    """`AutoProcessor.from_pretrained` with clear errors (see the module docstring). `language_model=False`
    leaves a folder's language model unread (greedy decoding needs none, and a damaged one must not stop it)."""
    if not language_model and _processor_class(path) == "EBranchformerProcessorWithLM":
        from modeling_ebranchformer import EBranchformerProcessor

        return _load(EBranchformerProcessor, path, False, "processor")
    return _load(AutoProcessor, path, trust_remote_code, "processor")


def _processor_class(path) -> str | None:
    import json

    try:
        return json.loads((Path(path) / "processor_config.json").read_text(encoding="utf-8")).get("processor_class")
    except (OSError, ValueError, AttributeError):
        return None
