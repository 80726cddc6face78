"""Weights of the small models attnkit trains itself (the toy adjective model, the induction
model): a ``.safetensors`` file of the state dict and its config beside it as ``<name>.json``,
written both or neither; shipped copies live in ``attnkit/data/``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from attnkit.runtime import check_writable, written_together

__all__ = ["weight_paths", "save_weights", "load_weights"]


def weight_paths(out: str | Path, name: str) -> tuple[Path, Path]:
    """``(weights, config)`` paths for ``out``: a ``.safetensors`` path, or a directory that will
    hold ``name``; the config is the same name with ``.json``."""
    path = Path(out)
    if path.suffix != ".safetensors":
        path = path / name
    return path, path.with_suffix(".json")


def save_weights(model: nn.Module, config: Any, out: str | Path, name: str, *,
                 overwrite: bool = False) -> Path:
    """Write ``model``'s weights to ``out`` (a ``.safetensors`` path or a directory) and the
    dataclass ``config`` beside them, both or neither; existing files are replaced only with
    ``overwrite=True``. Returns the weights path."""
    from safetensors.torch import save_file

    weights, config_path = check_writable(weight_paths(out, name), overwrite=overwrite)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with written_together([weights, config_path]) as (weights_tmp, config_tmp):
        save_file(state, str(weights_tmp))
        config_tmp.write_text(json.dumps(asdict(config), indent=1) + "\n")
    return weights


def load_weights(path: str | Path | None, name: str, retrain: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config as a dict)`` from ``path`` (a ``.safetensors`` file or its
    directory), or the copy shipped in ``attnkit/data/`` when ``path`` is None. ``retrain`` is
    the command that writes the file, named when it is missing."""
    from safetensors.torch import load_file

    if path is None:
        data = resources.files("attnkit") / "data"
        weights = data / name
        config_text = (data / Path(name).with_suffix(".json").name).read_text()
    else:
        weights = Path(path)
        if weights.is_dir():
            weights = weights / name
        if not weights.exists():
            raise FileNotFoundError(f"no weights at {weights}; train them with "
                                    f"`{retrain} --out {weights}`")
        config_text = weights.with_suffix(".json").read_text()
    with resources.as_file(weights) if path is None else contextlib.nullcontext(weights) as file:
        state = load_file(str(file))
    return state, json.loads(config_text)
