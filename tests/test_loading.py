"""models.load_weights_into: weights copied into a built model in place, a chunk at a time (no second copy).

The memory it saves is measured at full size by ``make fullsize`` (scripts/fullsize.py), not here.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from stablebeat_utils import models
from stablebeat_utils.models import ModelSourceError


def _tiny_sao_folder():
    return models.ensure_tiny_models(["sao"])["sao"]


@pytest.mark.parametrize("chunk_bytes", [1, 64 * 2**10, 2**40])
def test_loads_the_same_weights_as_load_state_dict(chunk_bytes):
    folder = _tiny_sao_folder()
    import json

    cfg = json.loads((folder / "model_config.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # other random weights than the file's
        model = models.create_sao_model(cfg)
    file_state = load_file(str(folder / "model.safetensors"))
    differs = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, file_state[k])]
    assert differs  # the built model starts from other weights
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    keys = models.load_weights_into(model, folder / "model.safetensors", chunk_bytes=chunk_bytes)
    assert sorted(keys) == sorted(file_state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, file_state[k]), k
        assert v.data_ptr() == ptrs[k], f"{k}: replaced, not filled in place"


def test_ckpt_files_load_too(tmp_path):
    folder = _tiny_sao_folder()
    state = load_file(str(folder / "model.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    model, _ = models.load_sao(str(folder))
    for p in model.parameters():
        p.data.zero_()
    models.load_weights_into(model, tmp_path / "model.ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_that_do_not_fit_are_named(tmp_path):
    folder = _tiny_sao_folder()
    model, _ = models.load_sao(str(folder))
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.startswith("model.") and state[k].ndim == 2)
    missing = {k: v for k, v in state.items() if k != key}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelSourceError, match=r"missing.safetensors: weights do not fit.*1 missing"):
        models.load_weights_into(model, tmp_path / "missing.safetensors")
    reshaped = dict(state, **{key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])})
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(ModelSourceError, match=f"another shape, e.g. {key}"):
        models.load_weights_into(model, tmp_path / "reshaped.safetensors")
    # nothing was copied before the check failed
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
