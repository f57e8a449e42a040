"""The README's main job, shortened: every stage of `python -m hubert_jax.demo` on the shipped corpus."""

import json
import os

import numpy as np

from hubert_jax import demo


def test_demo_runs_every_stage_and_exports_a_loadable_model(tmp_path, capsys):
    summary = demo.main(["--workdir", str(tmp_path), "--steps1", "60", "--steps2", "10"])
    out = capsys.readouterr().out
    for stage in ("1. MFCC", "2. iteration 1", "3. layer-3 features", "4. iteration 2", "5. export", "summary"):
        assert stage in out
    for key in ("pnmi_mfcc_100hz", "pnmi_mfcc_50hz", "pnmi_iter1_layer"):
        assert all(0.0 < v < 1.0 for v in summary[key].values())
    # the MFCC labels of the shipped corpus, as the README reports them (K=50)
    assert abs(summary["pnmi_mfcc_100hz"]["valid"] - 0.508) < 0.02
    # iteration 1 learns: the training loss falls
    losses = [json.loads(x)["loss"] for x in open(tmp_path / "iter1" / "metrics.jsonl")
              if json.loads(x)["split"] == "train"]
    assert losses[-1] < losses[0]
    # the export loads in hubert-jax and in transformers with the trained model's outputs
    assert summary["load_diffs"]["hubert-jax"] == 0.0
    assert summary["load_diffs"]["transformers"] < 1e-4
    files = set(os.listdir(summary["export"]))
    assert {"config.json", "flax_model.safetensors", "model.safetensors", "pretraining_heads.safetensors"} <= files
    config = json.load(open(os.path.join(summary["export"], "config.json")))
    assert config["hubert_pretraining"]["num_classes"] == [50]
    assert np.isfinite(summary["valid_accuracy_m"]["iter2"])
