"""Export to fairseq (`convert_pt_to_flax.py SRC OUT.pt --to-fairseq`), proven by fairseq itself.

`scripts/make_peer_fixtures.py --exports` runs `make_exports` below (this file run as a script, in our
environment), loads each file with fairseq's `load_model_ensemble_and_task` in the peer venv, records fairseq's
outputs on the fixture audio (tests/fixtures/peer/export/{name}.npz) and continues fairseq-hydra-train runs
from the pretraining exports; meta.json holds each file's content digest and those runs' losses. Here, without
fairseq: today's export of the same models has the digest of the file fairseq loaded, and gives fairseq's
recorded outputs (every layer, CTC logits, projections, the HuBERT criterion's loss); a fairseq file exported
back after conversion holds the original's tensors, dictionaries and settings.

    python tests/test_export_fairseq.py WORK   # the exports fairseq checks, and digests.json
"""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peer")
EXPORTED = os.path.join(PEER, "export")
TOL = 1e-4
# export name -> (peer fixture, its converter extras, how the exported directory is made from the conversion)
EXPORTS = {
    "hubert_base": ("hubert_base", (), "as converted"),
    "hubert_large": ("hubert_large", (), "as converted"),
    "hubert_ctc": ("hubert_ctc", ("--w2v-checkpoint", os.path.join(PEER, "hubert_base", "checkpoint_last.pt")),
                   "as converted"),
    "wav2vec2": ("wav2vec2", (), "as converted"),
    "wav2vec2_ctc": ("wav2vec2_ctc", (), "as converted"),
    # base models: fairseq's pretraining parameters ours lacks are made new
    "hubert_encoder": ("hubert_base", (), "transformers directory"),  # --to-pytorch: the encoder alone
    "wav2vec2_encoder": ("wav2vec2", (), "base model"),  # Wav2Vec2Model: no quantizer
}


def make_exports(work: str) -> dict[str, str]:
    """Each export of EXPORTS under `work` ({name}.pt), made through the command line; returns the paths."""
    import hubert_jax
    from hubert_jax.convert.cli import main as convert

    paths = {}
    for name, (fixture, extra, how) in EXPORTS.items():
        src = os.path.join(PEER, fixture, "checkpoint_last.pt")
        converted = os.path.join(work, "converted", name)
        assert convert([src, converted, "--overwrite", *extra]) == 0
        if how == "transformers directory":
            derived = converted + "_transformers"
            assert convert([converted, derived, "--to-pytorch", "--overwrite"]) == 0
            converted = derived
        elif how == "base model":
            derived = converted + "_base"
            hubert_jax.FlaxAutoModel.from_pretrained(converted).save_pretrained(derived)
            converted = derived
        paths[name] = os.path.join(work, f"{name}.pt")
        assert convert([converted, paths[name], "--to-fairseq", "--overwrite"]) == 0
    return paths


def digests(paths: dict[str, str]) -> dict[str, str]:
    from hubert_jax.convert.fairseq import load_checkpoint
    from hubert_jax.convert.to_fairseq import checkpoint_digest

    return {name: checkpoint_digest(load_checkpoint(path)) for name, path in paths.items()}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_exports(str(tmp_path_factory.mktemp("exports")))


def recorded():
    with open(os.path.join(EXPORTED, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def read_back(name: str):
    """(FlaxAuto class, output compared, its key in the recorded outputs) of an export read back: CTC logits,
    HuBERT's last hidden state, wav2vec 2.0's projected states."""
    import hubert_jax

    if name.endswith("_ctc"):
        return hubert_jax.FlaxAutoModelForCTC, "logits", "logits"
    if name.startswith("hubert"):
        return hubert_jax.FlaxAutoModel, "last_hidden_state", "last"
    return hubert_jax.FlaxAutoModelForPreTraining, "projected_states", "projected_states"


def clips():
    data = np.load(os.path.join(PEER, "audio.npz"))
    return [data["audio_0"], data["audio_1"]]


def test_every_export_is_the_file_fairseq_loaded(exports):
    meta = recorded()
    assert sorted(meta["exports"]) == sorted(EXPORTS)
    assert digests(exports) == {name: meta["exports"][name]["digest"] for name in EXPORTS}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_the_export_gives_fairseqs_outputs_for_it(exports, tmp_path, name):
    """The exported file, converted back, gives what fairseq computed from it: every layer, and the CTC
    logits, wav2vec 2.0's projections or HuBERT's criterion loss on fairseq's mask and labels."""
    import hubert_jax
    from hubert_jax.convert.cli import main as convert
    from hubert_jax.models.pretraining_hubert import LossWeights, pretraining_loss

    ref = dict(np.load(os.path.join(EXPORTED, f"{name}.npz")))
    out = tmp_path / "back"
    assert convert([exports[name], str(out)]) == 0  # self-contained: no --w2v-checkpoint for the CTC files
    ctc, hubert = name.endswith("_ctc"), name.startswith("hubert")
    auto, output, recorded_as = read_back(name)
    model = auto.from_pretrained(out)
    for i, x in enumerate(clips()):
        result = model(jnp.asarray(x)[None], output_hidden_states=True)
        hidden = result.hidden_states
        assert len(hidden) == sum(k.startswith(f"hidden_{i}_") for k in ref)
        for layer, value in enumerate(hidden):
            np.testing.assert_allclose(np.asarray(value[0]), ref[f"hidden_{i}_{layer}"], atol=TOL, rtol=0,
                                       err_msg=f"{name}: hidden_states[{layer}]")
        np.testing.assert_allclose(np.asarray(getattr(result, output)[0]), ref[f"{recorded_as}_{i}"], atol=TOL,
                                   rtol=0, err_msg=f"{name}: {output}")
        if not (ctc or hubert):
            np.testing.assert_allclose(np.asarray(result.projected_quantized_states[0]),
                                       ref[f"projected_quantized_{i}"], atol=TOL, rtol=0)
    if hubert and not ctc:
        pretraining = hubert_jax.FlaxAutoModelForPreTraining.from_pretrained(out)
        labels = [jnp.asarray(ref[f"loss_labels_{k}"]) for k in range(len(pretraining.head.num_classes))]
        result = pretraining(jnp.asarray(clips()[0])[None], labels, mask_time_indices=jnp.asarray(ref["loss_mask"]))
        loss, _ = pretraining_loss(result, LossWeights(masked=1.0, unmasked=0.0, features_pen=10.0))
        np.testing.assert_allclose(float(loss), float(ref["loss"]), rtol=1e-5)


def test_fairseq_trained_on_from_the_pretraining_exports():
    """fairseq-hydra-train restored the exported pretraining files and took updates with finite losses (recorded
    by the peer script from the runs' logs)."""
    runs = recorded()["continued"]
    assert sorted(runs) == ["hubert_base", "hubert_encoder", "wav2vec2"]
    for name, run in runs.items():
        assert run["restored"] == f"{name}.pt" and run["updates"] >= 2, (name, run)
        assert len(run["losses"]) == run["updates"] and all(np.isfinite(run["losses"])), (name, run)


@pytest.mark.parametrize("name", ["hubert_base", "hubert_large", "hubert_ctc", "wav2vec2", "wav2vec2_ctc"])
def test_a_fairseq_file_exported_back_holds_the_original(exports, name):
    """fairseq file -> hubert-jax -> fairseq file: the same tensors bit for bit, label or target dictionaries,
    model settings and normalisation (a fine-tuned HuBERT's unused label embeddings, which fairseq keeps after
    fine-tuning, are left out)."""
    from hubert_jax.convert.fairseq import convert_checkpoint, load_checkpoint

    fixture, extra, _ = EXPORTS[name]
    original = load_checkpoint(os.path.join(PEER, fixture, "checkpoint_last.pt"))
    exported = load_checkpoint(exports[name])
    dropped = {"w2v_encoder.w2v_model.label_embs_concat"} if name == "hubert_ctc" else set()
    assert set(exported["model"]) == set(original["model"]) - dropped
    for key, value in exported["model"].items():
        assert np.array_equal(value.numpy(), original["model"][key].numpy()), key
    for key, value in original["task_state"].items():
        assert exported["task_state"][key] == value
    # and fairseq computed from the exported file what it computed from the original
    theirs, again = (dict(np.load(f)) for f in (os.path.join(PEER, fixture, "expected.npz"),
                                                 os.path.join(EXPORTED, f"{name}.npz")))
    compared = [k for k in theirs if k.split("_")[0] in ("hidden", "last", "logits", "projected")]
    assert compared and all(k in again for k in compared)
    for key in compared:
        np.testing.assert_allclose(again[key], theirs[key], atol=TOL, rtol=0, err_msg=key)
    before = convert_checkpoint(original, "original", extra[1] if extra else None)
    after = convert_checkpoint(exported, "exported")
    assert (after.fields, after.kind, after.vocab, after.normalize) == (before.fields, before.kind, before.vocab,
                                                                       before.normalize)


def test_refusals_name_the_reason(tmp_path):
    import hubert_jax
    from hubert_jax.convert.cli import main as convert
    from hubert_jax.convert.to_fairseq import fairseq_checkpoint, target_dictionary

    wavlm = tmp_path / "wavlm"
    hubert_jax.WavLMModel(hubert_jax.preset("wavlm-base").replace(num_hidden_layers=1)).save_pretrained(wavlm)
    with pytest.raises(ValueError, match="WavLM is unilm's"):
        convert([str(wavlm), str(tmp_path / "w.pt"), "--to-fairseq"])
    with pytest.raises(ValueError, match="<s>, </s>, <unk> at 1-3"):
        target_dictionary({"a": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "<unk>": 4}, 5, "vocab.json")
    with pytest.raises(ValueError, match="ids are not 0..4"):
        target_dictionary({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 5}, 5, "vocab.json")
    config = hubert_jax.preset("hubert-base").replace(num_hidden_layers=1, feat_proj_layer_norm=False)
    with pytest.raises(ValueError, match="feat_proj_layer_norm False"):
        fairseq_checkpoint(hubert_jax.HubertModel(config), normalize=False)
    config = hubert_jax.preset("hubert-base").replace(num_hidden_layers=1, conv_dim=(768,) * 7)
    with pytest.raises(ValueError, match="not the identity"):
        fairseq_checkpoint(hubert_jax.HubertModel(config), normalize=False)
    out = tmp_path / "exists.pt"
    out.write_bytes(b"mine")
    with pytest.raises(SystemExit):
        convert([str(wavlm), str(out), "--to-fairseq"])
    assert out.read_bytes() == b"mine"


if __name__ == "__main__":
    work = os.path.abspath(sys.argv[1])
    made = make_exports(work)
    with open(os.path.join(work, "digests.json"), "w", encoding="utf-8") as f:
        json.dump(digests(made), f, indent=2, sort_keys=True)
    print(json.dumps(made))
