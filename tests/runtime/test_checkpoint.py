"""Loading and saving model folders, and the errors that name what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mamba3_integrations import CheckpointError, ConfigError, Mamba3Config, Mamba3ForCausalLM


@pytest.fixture
def pure_copy(golden_dir, tmp_path):
    folder = tmp_path / "lm"
    shutil.copytree(golden_dir / "lm_pure", folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_save_pretrained_round_trip_safetensors_and_bin(golden_dir, tmp_path):
    model = Mamba3ForCausalLM.from_pretrained(golden_dir / "lm_hybrid_mha")
    ids = load_file(golden_dir / "lm_hybrid_mha" / "expected.safetensors")["input_ids"]
    for safe in (True, False):
        out = tmp_path / f"saved_{safe}"
        model.save_pretrained(out, safe_serialization=safe)
        assert (out / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
        assert json.loads((out / "config.json").read_text()) == json.loads(
            (golden_dir / "lm_hybrid_mha" / "config.json").read_text())
        again = Mamba3ForCausalLM.from_pretrained(out)
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_saved_state_dict_uses_official_names(golden_dir, tmp_path):
    model = Mamba3ForCausalLM.from_pretrained(golden_dir / "lm_hybrid_mha")
    model.save_pretrained(tmp_path, safe_serialization=False)
    official = torch.load(golden_dir / "lm_hybrid_mha" / "pytorch_model.bin")
    ours = torch.load(tmp_path / "pytorch_model.bin")
    assert set(ours) == set(official)
    assert all(ours[k].shape == official[k].shape for k in official)


def test_sharded_checkpoint(golden_dir, tmp_path):
    state = torch.load(golden_dir / "lm_pure" / "pytorch_model.bin")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in shards.items():
        tensors = {k: state[k].contiguous() for k in part if k != "lm_head.weight"}
        save_file(tensors, str(tmp_path / name))
        weight_map.update({k: name for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(golden_dir / "lm_pure" / "config.json", tmp_path)
    model = Mamba3ForCausalLM.from_pretrained(tmp_path, dtype="float64")
    g = load_file(golden_dir / "lm_pure" / "expected.safetensors")
    assert torch.equal(model.generate(g["input_ids"], max_new_tokens=6), g["greedy"])


def test_tokenizer_is_loaded_from_the_folder(tiny_lm_dir):
    model = Mamba3ForCausalLM.from_pretrained(tiny_lm_dir)
    assert model.tokenizer is not None
    assert model.tokenizer.decode(model.tokenizer("café 🙂")["input_ids"]) == "café 🙂"


def test_missing_and_unexpected_tensors_are_named(pure_copy):
    state = torch.load(pure_copy / "pytorch_model.bin")
    state.pop("backbone.layers.1.mixer.D")
    state["backbone.layers.0.mixer.extra"] = torch.zeros(1)
    torch.save(state, pure_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.mixer\.D.*unexpected.*extra"):
        Mamba3ForCausalLM.from_pretrained(pure_copy)


def test_bad_shapes_are_named(pure_copy):
    edit_config(pure_copy, ssm_cfg={"layer": "Mamba3", "d_state": 16, "headdim": 16})
    expected = r"shape mismatches: .*B_bias: checkpoint \(8, 1, 32\)"
    with pytest.raises(CheckpointError, match=expected):
        Mamba3ForCausalLM.from_pretrained(pure_copy)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_modle": 64}, r"unknown key\(s\) \['d_modle'\] in config.json"),
        ({"ssm_cfg": {"layer": "Mamba3", "d_stat": 8}},
         r"unknown key\(s\) \['d_stat'\] in ssm_cfg"),
        ({"ssm_cfg": {"layer": "Mamba2"}}, "only 'Mamba3'"),
        ({"attn_layer_idx": [5]}, "out of range"),
        ({"attn_window": {"0": 4}}, "not in attn_layer_idx"),
        ({"ssm_cfg": {"layer": "Mamba3", "rope_fraction": 0.25}}, "rope_fraction"),
    ],
)
def test_config_errors_name_the_problem(pure_copy, changes, message):
    edit_config(pure_copy, **changes)
    with pytest.raises(ConfigError, match=message):
        Mamba3ForCausalLM.from_pretrained(pure_copy)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        Mamba3ForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(Mamba3Config(
        d_model=16, n_layer=1, vocab_size=10, ssm_cfg={"d_state": 8, "headdim": 8}).to_dict()))
    with pytest.raises(CheckpointError, match="no weights"):
        Mamba3ForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Mamba3ForCausalLM.from_pretrained(tmp_path)


def test_unknown_dtype_is_an_error(golden_dir):
    with pytest.raises(ConfigError, match="unknown dtype"):
        Mamba3ForCausalLM.from_pretrained(golden_dir / "lm_pure", dtype="float13")


def test_config_round_trip_keeps_extension_keys_only_when_set():
    cfg = Mamba3Config(d_model=16, n_layer=2, vocab_size=10, ssm_cfg={"d_state": 8, "headdim": 8},
                       attn_layer_idx=[1], attn_cfg={"num_heads": 2, "causal": True},
                       attn_window={1: 4})
    data = cfg.to_dict()
    assert data["attn_window"] == {"1": 4} and "norm_epsilon" not in data
    assert Mamba3Config.from_dict(json.loads(json.dumps(data))) == cfg
