"""Bad input gets a clear ValueError naming the cause."""

import jax.numpy as jnp
import numpy as np
import pytest

import hubert_jax
from tests.reference import TINY, audio


@pytest.fixture(scope="module")
def model():
    return hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY))


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\(batch, samples\).*shape \(4000,\)"):
        model(jnp.zeros((4000,)))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 4000\)"):
        model(jnp.zeros((1, 2, 4000)))


def test_wrong_dtype(model):
    with pytest.raises(ValueError, match="floating point.*int32"):
        model(jnp.zeros((1, 4000), jnp.int32))


def test_too_short_for_receptive_field(model):
    # tiny conv stack: kernels 10,3,2 strides 5,2,2 -> 10 + 2*5 + 1*10 = 30 samples
    model(jnp.zeros((1, 30)))
    with pytest.raises(ValueError, match="29 samples.*receptive field of 30"):
        model(jnp.zeros((1, 29)))
    # the released conv stack (kernels 10,3,3,3,3,2,2, strides 5,2,...) needs 400 samples
    full = hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(
        {**TINY, "conv_dim": (8,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2), "conv_kernel": (10, 3, 3, 3, 3, 2, 2)}))
    full(jnp.zeros((1, 400)))
    with pytest.raises(ValueError, match="receptive field of 400 samples"):
        full(jnp.zeros((1, 399)))


def test_mask_shape_mismatch(model):
    x, _ = audio()
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 3999\).*\(2, 4000\)"):
        model(jnp.asarray(x), attention_mask=jnp.ones((2, 3999)))
    with pytest.raises(ValueError, match="mask_time_indices shape"):
        model(jnp.asarray(x), mask_time_indices=jnp.zeros((2, 5), bool))


def test_errors_also_raised_under_jit(model):
    from flax import nnx

    with pytest.raises(ValueError, match="receptive field"):
        nnx.jit(lambda m, x: m(x).last_hidden_state)(model, jnp.zeros((1, 20)))


@pytest.mark.parametrize("changes,match", [
    (dict(hidden_size=30, num_attention_heads=4), "hidden_size \\(30\\) must be divisible by num_attention_heads"),
    (dict(conv_stride=(5, 2)), "conv_dim, conv_stride and conv_kernel"),
    (dict(feat_extract_norm="batch"), "feat_extract_norm"),
    (dict(num_conv_pos_embedding_groups=5), "num_conv_pos_embedding_groups"),
    (dict(hidden_dropout=1.5), "hidden_dropout"),
    (dict(hidden_act="nope"), "hidden_act"),
])
def test_bad_configs(changes, match):
    with pytest.raises(ValueError, match=match):
        config = hubert_jax.HubertConfig.from_dict({**TINY, **changes})
        hubert_jax.HubertModel(config)


def test_wrong_family_config_for_head():
    with pytest.raises(ValueError, match="needs a wavlm config"):
        hubert_jax.WavLMForCTC(hubert_jax.HubertConfig.from_dict(TINY))
    with pytest.raises(ValueError, match="model_type 'wavlm'.*expects 'hubert'"):
        hubert_jax.HubertConfig.from_dict({**TINY, "model_type": "wavlm"})
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        hubert_jax.SpeechConfig.from_dict({"model_type": "bert"})


def test_adapter_refused_by_classification_heads():
    config = hubert_jax.Wav2Vec2Config.from_dict({**TINY, "add_adapter": True})
    with pytest.raises(ValueError, match="adapter"):
        hubert_jax.Wav2Vec2ForSequenceClassification(config)


def test_bad_options():
    config = hubert_jax.HubertConfig.from_dict(TINY)
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        hubert_jax.HubertModel(config, attention_impl="flash")
    with pytest.raises(ValueError, match="remat_policy='some'"):
        hubert_jax.HubertModel(config, remat_policy="some")


def test_loading_mismatched_weights_reports_every_name(model):
    from hubert_jax.weights.state import load_flat, model_to_flat

    flat = dict(model_to_flat(model))
    flat["encoder.layer_norm.scale"] = np.ones((7,), np.float32)
    flat["encoder.layers.0.layer_norm.bias"] = np.ones((3,), np.float32)
    del flat["encoder.layers.1.attention.q_proj.kernel"], flat["masked_spec_embed"]
    flat["lm_head.kernel"] = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError) as info:
        load_flat(model, flat)
    message = str(info.value)
    assert "missing (2): encoder.layers.1.attention.q_proj.kernel, masked_spec_embed" in message
    assert "unexpected (1): lm_head.kernel" in message
    assert "encoder.layer_norm.scale (checkpoint (7,), model (32,))" in message
    assert "encoder.layers.0.layer_norm.bias (checkpoint (3,), model (32,))" in message


# ------------------------------------------------------------------------------------- the commands
def _command(*args):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=root, timeout=300)


@pytest.mark.parametrize("args,line", [
    (["train.py", "--config", "tests/tiny_config.py", "--workdir", "{tmp}/run", "--config.train.stpes=3"],
     'train.py: unknown config field \'stpes\': Did you mean "steps" instead of "stpes"?'),
    (["-m", "hubert_jax.labels", "mfcc", "--manifest", "{tmp}", "--out", "{tmp}/f"],
     "python -m hubert_jax.labels: {tmp}: cannot read the manifest ([Errno 21] Is a directory: '{tmp}')"),
    (["convert_pt_to_flax.py", "{tmp}", "{tmp}/out"],
     "convert_pt_to_flax.py: no config.json at {tmp}/config.json"),
])
def test_a_user_error_ends_a_command_with_one_line_and_debug_shows_the_traceback(tmp_path, args, line):
    args = [a.format(tmp=tmp_path) for a in args]
    done = _command(*args)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(line.format(tmp=tmp_path)), done.stderr[-2000:]
    debug = _command(*args, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_bug_keeps_its_traceback():
    from hubert_jax.cli_errors import run_command

    def bug():
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError):
        run_command("x", bug, argv=[])
    assert run_command("x", lambda: (_ for _ in ()).throw(ValueError("bad value")), argv=[]) == 1
