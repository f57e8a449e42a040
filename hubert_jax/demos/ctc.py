"""After the main demo: CTC fine-tuning of its pretrained HuBERT against the same fine-tuning from scratch.

    python -m hubert_jax.demo_ctc [--workdir work/demo] [--steps 500]

Both runs use configs/ctc_demo.py (same architecture, data, seed and step budget); the only difference is
`model.init_from` = the main demo's export (`{workdir}/model`, made by `python -m hubert_jax.demo`). Prints
the validation CER/WER of both (greedy decoding on data/demo/valid) and writes them to
`{workdir}/ctc_summary.json`. Reruns resume where they stopped.
"""

from __future__ import annotations

import argparse
import json
import os

from hubert_jax.demos.common import ROOT, in_work_folder, repo_config


def ctc_config(init_from: str, *, preset: str | None = None, steps: int | None = None):
    """configs/ctc_demo.py with repository paths, from `init_from` (or, empty, from scratch with `preset`'s
    family at the demo's sizes)."""
    cfg = repo_config("ctc_demo")
    for split in ("train", "valid"):  # paths relative to the repository, wherever we are run from
        part = cfg.data[split]
        part.manifest, part.targets = (os.path.join(ROOT, part.manifest), os.path.join(ROOT, part.targets))
    cfg.model.init_from = init_from
    if preset:
        cfg.model.preset = preset
    if steps:
        cfg.train.steps = cfg.optim.schedule.total_steps = steps
    return cfg


def fine_tune_both(wd: str, pretrained: str, *, preset: str | None = None, steps: int | None = None) -> dict:
    """CTC from `pretrained` and from scratch (same architecture, data, seed and steps): valid CER/WER/loss."""
    from hubert_jax.training.run import run

    summary = {}
    for name, init_from in (("pretrained", pretrained), ("scratch", "")):
        cfg = ctc_config(init_from, preset=preset, steps=steps)
        print(f"=== CTC fine-tuning from {'the pretrained model' if init_from else 'random initialisation'}",
              flush=True)
        result = run(cfg, os.path.join(wd, f"ctc_{name}"))
        summary[name] = {k: result.valid[k] for k in ("cer", "wer", "loss")}
        summary["steps"] = cfg.train.steps
    print("\n| start | steps | valid CER | valid WER | valid CTC loss |\n|---|---|---|---|---|")
    for name in ("pretrained", "scratch"):
        r = summary[name]
        print(f"| {name} | {summary['steps']} | {r['cer']:.3f} | {r['wer']:.3f} | {r['loss']:.3f} |")
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/demo")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    args = parser.parse_args(argv)
    return in_work_folder(args.workdir, lambda wd: _demo(args, wd))


def _demo(args, wd: str) -> dict:
    pretrained = os.path.join(wd, "model")
    if not os.path.isfile(os.path.join(pretrained, "config.json")):
        raise SystemExit(f"{args.workdir.rstrip('/')}/model: no pretrained demo model; run `python -m "
                         f"hubert_jax.demo --workdir {args.workdir}` first")
    summary = fine_tune_both(wd, pretrained, steps=args.steps)
    with open(os.path.join(wd, "ctc_summary.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in summary.items() if k != "steps"}, f, indent=2)
    return {k: v for k, v in summary.items() if k != "steps"}


if __name__ == "__main__":
    main()
