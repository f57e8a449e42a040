"""Configs read and write transformers' config.json, keeping keys they do not model."""

import json

import pytest

import hubert_jax
from hubert_jax.config import PRESETS, preset
from tests.reference import TINY, torch_config


@pytest.mark.parametrize("family", ["hubert", "wavlm", "wav2vec2"])
def test_roundtrip_through_transformers(tmp_path, family):
    import transformers

    tcfg = torch_config(family, do_stable_layer_norm=True, id2label={0: "ko", 1: "en", 2: "ja"},
                        label2id={"ko": 0, "en": 1, "ja": 2})
    tcfg.save_pretrained(tmp_path / "hf")
    ours = hubert_jax.SpeechConfig.from_pretrained(tmp_path / "hf")
    assert type(ours).model_type == family
    assert ours.num_labels == 3 and ours.id2label[2] == "ja"
    assert ours.conv_kernel == (10, 3, 2) and ours.do_stable_layer_norm
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    assert type(back) is type(tcfg)
    skip = {"transformers_version", "_name_or_path"}
    a = {k: v for k, v in transformers.AutoConfig.from_pretrained(tmp_path / "hf").to_dict().items() if k not in skip}
    b = {k: v for k, v in back.to_dict().items() if k not in skip}
    assert a == b


def test_unknown_keys_are_kept(tmp_path):
    data = {**TINY, "model_type": "hubert", "architectures": ["HubertForCTC"], "my_team_note": {"a": [1, 2]}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = hubert_jax.SpeechConfig.from_pretrained(tmp_path)
    assert config.extra["my_team_note"] == {"a": [1, 2]}
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["my_team_note"] == {"a": [1, 2]} and written["architectures"] == ["HubertForCTC"]
    assert written["num_feat_extract_layers"] == 3 and written["model_type"] == "hubert"


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        hubert_jax.SpeechConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hubert_jax.SpeechConfig.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_transformers_configs(name):
    import transformers

    config = preset(name)
    tcfg = transformers.AutoConfig.for_model(config.model_type, **{
        k: v for k, v in config.to_dict().items() if k != "model_type"})
    assert tcfg.hidden_size == config.hidden_size


def test_preset_details():
    assert preset("hubert-base-korean").num_attention_heads == 8
    assert preset("hubert-base-korean").hidden_size == 768
    assert not preset("distilhubert").feat_proj_layer_norm and preset("distilhubert").num_hidden_layers == 2
    large = preset("hubert-large")
    assert (large.feat_extract_norm, large.do_stable_layer_norm, large.conv_bias) == ("layer", True, True)
    assert preset("wav2vec2-xls-r-1b").hidden_size == 1280
    assert preset("hubert-base", vocab_size=40).vocab_size == 40
    with pytest.raises(ValueError, match="unknown preset"):
        preset("hubert-huge")


def test_configs_are_hashable_by_content():
    a = hubert_jax.HubertConfig.from_dict(TINY)
    b = hubert_jax.HubertConfig.from_dict(TINY)
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(num_hidden_layers=2)


def test_train_steps_drive_the_schedule_unless_total_steps_is_set():
    from hubert_jax.training.config import pretraining_defaults
    from hubert_jax.training.optim import make_schedule, run_length_warnings, schedule_steps

    cfg = pretraining_defaults()
    cfg.train.steps = 1000
    cfg.optim.schedule.update(dict(warmup_steps=100, end_ratio=0.1))
    assert cfg.optim.schedule.total_steps == 0 and schedule_steps(cfg) == 1000 and run_length_warnings(cfg) == []
    lr = make_schedule(cfg.optim.schedule, schedule_steps(cfg))
    assert abs(float(lr(1000)) - 0.1 * cfg.optim.schedule.peak) < 1e-9 and float(lr(550)) > float(lr(1000))
    cfg.optim.schedule.total_steps = 600  # set apart from the run: it wins, and a schedule too short is named
    assert schedule_steps(cfg) == 600
    assert run_length_warnings(cfg) == [
        "config.optim.schedule.total_steps (600) ends before config.train.steps (1000): the last 400 steps train at "
        "the schedule's final rate. Leave total_steps at 0 to follow train.steps"]
    cfg.optim.schedule.total_steps = 400000  # and one the run stops long before
    assert "stops the run 0% of the way through its schedule" in run_length_warnings(cfg)[0]
    cfg.optim.schedule.total_steps = 1200
    assert run_length_warnings(cfg) == []
    with pytest.raises(ValueError, match="total_steps is 0"):
        make_schedule(pretraining_defaults().optim.schedule)
