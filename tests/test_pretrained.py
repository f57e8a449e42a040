"""Weights in and out: transformers directories -> from_pretrained -> save_pretrained -> export back to
transformers, for every family and head; sharded and .bin checkpoints; both weight-norm spellings;
atomic writes and clear errors. Everything is built on the spot in tmp directories."""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hubert_jax
from hubert_jax.weights import files as io
from hubert_jax.convert.cli import main as convert_main
from hubert_jax.pretrained import write_directory
from hubert_jax.processing import FeatureExtractor
from tests.reference import HEADS, PREFIX, audio, max_diff, run_torch, torch_config

TOL = 1e-4
AUTO = {"Model": hubert_jax.FlaxAutoModel, "ForCTC": hubert_jax.FlaxAutoModelForCTC,
        "ForSequenceClassification": hubert_jax.FlaxAutoModelForAudioClassification,
        "ForAudioFrameClassification": hubert_jax.FlaxAutoModelForAudioFrameClassification,
        "ForXVector": hubert_jax.FlaxAutoModelForAudioXVector}


def _main_output(out):
    for key in ("embeddings", "logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)


def _save_torch(tmp_path, family, head="Model", seed=0, **overrides):
    import transformers

    torch.manual_seed(seed)
    tmodel = getattr(transformers, PREFIX[family] + head)(torch_config(family, **overrides)).eval()
    path = tmp_path / f"hf-{family}-{head}"
    tmodel.save_pretrained(path)
    return tmodel, path


@pytest.mark.parametrize("family,head", [(f, h) for f in HEADS for h in HEADS[f]])
def test_roundtrip_every_family_and_head(tmp_path, family, head):
    import transformers

    tmodel, hf_dir = _save_torch(tmp_path, family, head)
    x, mask = audio(pad_to=(4000, 2700))
    ref = _main_output(run_torch(tmodel, x, mask))

    model = AUTO[head].from_pretrained(hf_dir)
    assert type(model).__name__ == PREFIX[family] + head
    assert max_diff(ref, _main_output(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)))) < TOL

    model.save_pretrained(tmp_path / "ours")
    for scan in (False, True):
        again = type(model).from_pretrained(tmp_path / "ours", scan_layers=scan)
        assert max_diff(ref, _main_output(again(jnp.asarray(x), attention_mask=jnp.asarray(mask)))) < TOL

    hubert_jax.export_to_transformers(again, tmp_path / "back")
    auto_cls = transformers.AutoModel if head == "Model" else getattr(transformers, PREFIX[family] + head)
    back = auto_cls.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == PREFIX[family] + head
    assert max_diff(ref, _main_output(run_torch(back, x, mask))) < TOL


def test_bin_sharded_and_old_weight_norm_spellings(tmp_path):
    from safetensors.torch import load_file

    tmodel, hf_dir = _save_torch(tmp_path, "hubert", "ForCTC")
    x, _ = audio()
    ref = run_torch(tmodel, x).logits
    state = load_file(hf_dir / io.TORCH_SAFETENSORS)

    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                              "weight_v"): v
           for k, v in state.items()}
    assert any(k.endswith("conv.weight_g") for k in old)
    variants = {"bin_old_spelling": {io.TORCH_BIN: old}}
    # two shards of .bin with an index, as transformers writes them
    keys = sorted(state)
    shard_a, shard_b = dict((k, state[k]) for k in keys[:10]), dict((k, state[k]) for k in keys[10:])
    variants["bin_sharded"] = {"pytorch_model-00001-of-00002.bin": shard_a, "pytorch_model-00002-of-00002.bin": shard_b}
    for name, files in variants.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text((hf_dir / "config.json").read_text())
        for fname, tensors in files.items():
            torch.save(tensors, directory / fname)
        if name == "bin_sharded":
            weight_map = {k: fname for fname, tensors in files.items() for k in tensors}
            (directory / io.TORCH_BIN_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        model = hubert_jax.FlaxAutoModelForCTC.from_pretrained(directory)
        assert max_diff(ref, model(jnp.asarray(x)).logits) < TOL, name

    # sharded safetensors written by transformers itself
    tmodel.save_pretrained(tmp_path / "hf-sharded", max_shard_size="20KB")
    assert (tmp_path / "hf-sharded" / io.TORCH_SAFETENSORS_INDEX).exists()
    model = hubert_jax.FlaxAutoModelForCTC.from_pretrained(tmp_path / "hf-sharded")
    assert max_diff(ref, model(jnp.asarray(x)).logits) < TOL

    # our own sharded output, and an export in the old spelling that transformers still reads
    model.save_pretrained(tmp_path / "ours-sharded", max_shard_bytes=20_000)
    assert (tmp_path / "ours-sharded" / io.FLAX_INDEX).exists()
    reloaded = hubert_jax.HubertForCTC.from_pretrained(tmp_path / "ours-sharded")
    assert max_diff(ref, reloaded(jnp.asarray(x)).logits) < TOL
    hubert_jax.export_to_transformers(reloaded, tmp_path / "back-old", old_weight_norm=True)
    import transformers

    back = transformers.HubertForCTC.from_pretrained(tmp_path / "back-old").eval()
    assert max_diff(ref, run_torch(back, x).logits) < TOL


def test_base_checkpoint_into_head_and_head_checkpoint_into_base(tmp_path, caplog):
    tmodel, hf_dir = _save_torch(tmp_path, "wav2vec2", "ForCTC")
    x, _ = audio()
    hidden = run_torch(tmodel.wav2vec2, x).last_hidden_state
    base = hubert_jax.FlaxAutoModel.from_pretrained(hf_dir)
    assert type(base).__name__ == "Wav2Vec2Model"
    assert max_diff(hidden, base(jnp.asarray(x)).last_hidden_state) < TOL
    base.save_pretrained(tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger="hubert_jax.pretrained"):
        clf = hubert_jax.FlaxAutoModelForAudioClassification.from_pretrained(tmp_path / "base")
    assert "newly initialised" in caplog.text and "classifier.kernel" in caplog.text
    assert max_diff(hidden, clf.base_model(jnp.asarray(x)).last_hidden_state) < TOL


def test_bf16_storage_roundtrip(tmp_path):
    _, hf_dir = _save_torch(tmp_path, "wavlm")
    model = hubert_jax.WavLMModel.from_pretrained(hf_dir, param_dtype=jnp.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    again = hubert_jax.WavLMModel.from_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    a = hubert_jax.weights.state.model_to_flat(model)
    b = hubert_jax.weights.state.model_to_flat(again)
    assert all(a[k].dtype == jnp.bfloat16 and np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad input
def test_corrupt_and_truncated_weights_name_the_file(tmp_path):
    _, hf_dir = _save_torch(tmp_path, "hubert")
    path = hf_dir / io.TORCH_SAFETENSORS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        hubert_jax.FlaxAutoModel.from_pretrained(hf_dir)
    path.unlink()
    torch_bin = hf_dir / io.TORCH_BIN
    torch_bin.write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match=r"pytorch_model.bin: not a readable PyTorch checkpoint"):
        hubert_jax.FlaxAutoModel.from_pretrained(hf_dir)
    torch_bin.unlink()
    with pytest.raises(FileNotFoundError, match="no weights found"):
        hubert_jax.FlaxAutoModel.from_pretrained(hf_dir)


def test_every_mismatched_tensor_is_reported(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, hf_dir = _save_torch(tmp_path, "hubert")
    state = load_file(hf_dir / io.TORCH_SAFETENSORS)
    del state["encoder.layers.0.attention.q_proj.weight"], state["encoder.layers.2.final_layer_norm.bias"]
    state["encoder.layer_norm.weight"] = np.ones((5,), np.float32)
    state["encoder.extra_thing.weight"] = np.ones((2,), np.float32)
    save_file(state, hf_dir / io.TORCH_SAFETENSORS, metadata={"format": "pt"})
    with pytest.raises(ValueError) as info:
        hubert_jax.FlaxAutoModel.from_pretrained(hf_dir)
    message = str(info.value)
    assert "model.safetensors does not match the model" in message
    assert "missing (2): encoder.layers.0.attention.q_proj.kernel, encoder.layers.2.final_layer_norm.bias" in message
    assert "unexpected (1): encoder.extra_thing.weight" in message
    assert "encoder.layer_norm.scale (" in message and "(5,)" in message


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match="unsupported model_type 'whisper'"):
        hubert_jax.FlaxAutoModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ValueError, match="no ForXVector head for model_type 'hubert'"):
        hubert_jax.FlaxAutoModelForAudioXVector.from_pretrained(tmp_path)


def test_atomic_directory_writes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(FileExistsError, match="not empty"):
        write_directory(out, lambda tmp: None, overwrite=False)

    def failing(tmp):
        (open(os.path.join(tmp, "half.safetensors"), "w")).write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_directory(out, failing, overwrite=True)
    assert sorted(os.listdir(out)) == ["keep.txt"]  # previous contents intact
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp dirs left
    write_directory(tmp_path / "new", lambda tmp: open(os.path.join(tmp, "a"), "w").close())
    assert os.listdir(tmp_path / "new") == ["a"]


def test_convert_cli_both_directions(tmp_path, capsys):
    import transformers

    tmodel, hf_dir = _save_torch(tmp_path, "wavlm", "ForSequenceClassification")
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5}))
    transformers.Wav2Vec2Processor(  # as transformers 5 saves it: processor_config.json, no preprocessor_config.json
        feature_extractor=transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True),
        tokenizer=transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))).save_pretrained(hf_dir)
    x, mask = audio(pad_to=(4000, 3500))
    ref = run_torch(tmodel, x, mask).logits
    assert convert_main([str(hf_dir), str(tmp_path / "jax")]) == 0
    assert "max abs difference against transformers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        convert_main([str(hf_dir), str(tmp_path / "jax")])  # non-empty OUT refused
    assert "exists and is not empty" in capsys.readouterr().err
    assert convert_main([str(hf_dir), str(tmp_path / "jax"), "--overwrite"]) == 0
    model = hubert_jax.FlaxAutoModelForAudioClassification.from_pretrained(tmp_path / "jax")
    assert max_diff(ref, model(jnp.asarray(x), attention_mask=jnp.asarray(mask)).logits) < TOL

    assert convert_main([str(tmp_path / "jax"), str(tmp_path / "pt"), "--to-pytorch"]) == 0
    back = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "pt").eval()
    assert max_diff(ref, run_torch(back, x, mask).logits) < TOL
    # the processor travels with the weights, both ways
    assert (tmp_path / "jax" / "processor_config.json").exists() and (tmp_path / "jax" / "vocab.json").exists()
    assert FeatureExtractor.from_pretrained(tmp_path / "jax").return_attention_mask
    assert transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "pt").feature_extractor.return_attention_mask


@pytest.mark.parametrize("head", ["Model", "ForCTC"])
def test_transformers_v4_flax_msgpack_loads(tmp_path, head):
    # fixture in v4's FlaxWav2Vec2 naming (nested params, pos-conv weight_v/weight_g in torch layout);
    # v4 Flax supported only the layer-norm extractor with the pre-LN encoder
    from flax.serialization import msgpack_serialize

    from hubert_jax.weights.state import model_to_flat

    tmodel, hf_dir = _save_torch(tmp_path, "wav2vec2", head, feat_extract_norm="layer", do_stable_layer_norm=True,
                                 conv_bias=True)
    flat = model_to_flat(AUTO[head].from_pretrained(hf_dir))
    tree = {}
    for name, value in flat.items():
        if name.endswith((".weight_v", ".weight_g")):
            value = value.transpose(2, 1, 0)
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(value)
    v4 = tmp_path / "v4"
    v4.mkdir()
    (v4 / "config.json").write_text((hf_dir / "config.json").read_text())
    (v4 / io.FLAX_MSGPACK).write_bytes(msgpack_serialize(tree))
    x, mask = audio(pad_to=(4000, 2600))
    ref = _main_output(run_torch(tmodel, x, mask))
    model = AUTO[head].from_pretrained(v4)
    assert max_diff(ref, _main_output(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)))) < TOL
    (v4 / io.FLAX_MSGPACK).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="flax_model.msgpack: not a readable Flax msgpack checkpoint"):
        AUTO[head].from_pretrained(v4)


@pytest.mark.parametrize("scan", [False, True])
def test_loading_straight_into_sharded_arrays(tmp_path, scan):
    import jax

    from hubert_jax.sharding import make_mesh

    assert jax.device_count() == 8  # tests/conftest.py
    tmodel, hf_dir = _save_torch(tmp_path, "hubert", "ForCTC", hidden_size=64, intermediate_size=128,
                                 conv_dim=(32, 32, 32))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
    model = hubert_jax.FlaxAutoModelForCTC.from_pretrained(hf_dir, mesh=mesh, scan_layers=scan)
    q = model.hubert.encoder.layers.attention.q_proj.kernel[...] if scan else \
        model.hubert.encoder.layers[0].attention.q_proj.kernel[...]
    expected = ((None,) if scan else ()) + ("fsdp", "tensor")
    assert tuple(q.sharding.spec) == expected
    # each device holds a quarter of the matrix (fsdp=2 x tensor=2), not a full copy
    assert {s.data.shape[-2:] for s in q.addressable_shards} == {(32, 32)}
    ff = model.hubert.encoder.layers.feed_forward.intermediate_dense.kernel[...] if scan else \
        model.hubert.encoder.layers[0].feed_forward.intermediate_dense.kernel[...]
    assert {s.data.shape[-2:] for s in ff.addressable_shards} == {(32, 64)}
    x, _ = audio()
    ref = run_torch(tmodel, x).logits
    assert max_diff(ref, model(jnp.asarray(x)).logits) < TOL
    # a base checkpoint into a new head still works sharded (the head is initialised on the mesh)
    hubert_jax.FlaxAutoModel.from_pretrained(hf_dir).save_pretrained(tmp_path / "base")
    clf = hubert_jax.FlaxAutoModelForAudioClassification.from_pretrained(tmp_path / "base", mesh=mesh)
    assert clf.classifier.kernel[...].sharding.mesh == mesh


def test_batch_norm_statistics_roundtrip(tmp_path):
    import transformers

    tmodel, hf_dir = _save_torch(tmp_path, "hubert", conv_pos_batch_norm=True)
    bn = tmodel.encoder.pos_conv_embed.batch_norm
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    tmodel.save_pretrained(hf_dir)
    x, _ = audio()
    ref = run_torch(tmodel, x).last_hidden_state
    model = hubert_jax.HubertModel.from_pretrained(hf_dir)
    assert max_diff(bn.running_var, model.encoder.pos_conv_embed.batch_norm.var[...]) == 0
    hubert_jax.export_to_transformers(model, tmp_path / "back")
    back = transformers.HubertModel.from_pretrained(tmp_path / "back").eval()
    assert max_diff(bn.running_mean, back.encoder.pos_conv_embed.batch_norm.running_mean) == 0
    assert max_diff(ref, run_torch(back, x).last_hidden_state) < TOL


def test_hub_id_resolves_from_the_cache_offline(tmp_path):
    # the layout huggingface_hub keeps on disk: models--{org}--{name}/refs/main + snapshots/{revision}/
    _, hf_dir = _save_torch(tmp_path, "wavlm")
    repo = tmp_path / "cache" / "models--acme--tiny-wavlm"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    for f in hf_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    model = hubert_jax.FlaxAutoModel.from_pretrained("acme/tiny-wavlm", cache_dir=str(tmp_path / "cache"),
                                                     local_files_only=True)
    assert type(model).__name__ == "WavLMModel"
    with pytest.raises(FileNotFoundError, match="not in the hub cache"):
        hubert_jax.FlaxAutoModel.from_pretrained("acme/missing", cache_dir=str(tmp_path / "cache"),
                                                 local_files_only=True)


def test_saved_directories_follow_the_umask(tmp_path):
    """mkdtemp's 0700 made every saved model unreadable to the other users of a shared cluster."""
    import stat

    from flax import nnx

    from tests.reference import TINY

    old = os.umask(0o022)
    try:
        model = hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY), rngs=nnx.Rngs(0))
        directory = model.save_pretrained(str(tmp_path / "shared"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
    for name in os.listdir(directory):
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o644, name
