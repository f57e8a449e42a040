"""Training speed: one HuBERT pretraining step, hubert-jax against a PyTorch transformers step with the
same loss, on the same device and dtype, one table.

    python benchmarks/training.py --batch 1 --seconds 4            # CPU: a short smoke-sized step
    python benchmarks/training.py --models base,large --dtype bfloat16   # a GPU: the recipes' batches
    python benchmarks/training.py --models tiny --batch 1 --seconds 0.5 --repeats 1   # every path (checks)

hubert-jax: the real train step of configs/hubert_base_iter1.py / configs/hubert_large.py (masked
prediction, AdamW, clipping, non-finite guard) on one device. PyTorch: transformers' HubertModel with
fairseq's span mask applied through `mask_time_indices`, `final_proj`, the label embeddings, the cosine
logits / 0.1 cross-entropy on the masked frames plus the feature penalty, `loss.backward()`, gradient
clipping and `torch.optim.AdamW` (bf16 through `torch.autocast`, float32 master weights, as ours).
Per-device batch (default): the recipes' full 15.6 s crops per GPU, base 5 and large 3 (fairseq: 1.4M and
900k samples per GPU). Cells are medians of --repeats steps after a warm-up, interleaved round by round.
MFU: 3 x the forward FLOPs of ../shared/REFERENCE.md section 3 over --peak-tflops (989 on H100/H200).
"""

from __future__ import annotations

import argparse
import os
import sys

from hubert_jax.lengths import SAMPLE_RATE
from inference import TINY, gflop, interleaved_medians, start_devices  # benchmarks/ is on the path as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = {"base": ("hubert_base_iter1", 5), "large": ("hubert_large", 3), "tiny": ("hubert_base_iter1", 1)}


def recipe_config(model: str, batch: int, seconds: float, dtype: str, attention: str, remat: str):
    from hubert_jax.training.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", f"{RECIPE[model][0]}.py"))
    if model == "tiny":  # the base recipe shrunk: checks that every path runs (inference.TINY)
        cfg.model.overrides.update(TINY)
        cfg.model.head.final_dim = 16
    cfg.data.batch_size = batch
    cfg.data.crop_samples = int(seconds * SAMPLE_RATE)
    cfg.model.dtype = dtype
    cfg.model.attention_impl = attention
    cfg.model.remat_policy = remat
    cfg.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return cfg


def fake_batch(cfg, batch: int, samples: int):
    import numpy as np

    rng = np.random.default_rng(0)
    frames = int(samples / SAMPLE_RATE * cfg.model.head.label_rate)
    k = cfg.model.head.num_classes[0]
    return {"input_values": rng.standard_normal((batch, samples), np.float32),
            "attention_mask": np.ones((batch, samples), np.int32),
            "labels": rng.integers(0, k, (batch, 1, frames), dtype=np.int32)}


def jax_step(cfg, batch: int, samples: int):
    import jax

    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.tasks import make_trainer

    trainer = make_trainer(cfg, mesh_from_config(cfg.mesh, devices=jax.devices()[:1]))
    state = {"value": trainer.initial_state(trainer.init())}
    data = jax.device_put(fake_batch(cfg, batch, samples))

    def step():
        state["value"], metrics = trainer.train_step(state["value"], data)
        jax.block_until_ready(metrics["loss"])

    return step


def torch_step(cfg, batch: int, samples: int, dtype: str, device: str):
    import numpy as np
    import torch
    import transformers
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    from hubert_jax.config import preset

    hub = preset(cfg.model.preset)
    fields = {k: v for k, v in hub.to_dict().items() if k not in ("architectures", "model_type", "transformers_version")}
    fields.update(dict(cfg.model.overrides))
    config = transformers.HubertConfig(**fields)
    config._attn_implementation = "sdpa"  # noqa: SLF001
    head = cfg.model.head
    model = transformers.HubertModel(config).to(device).train()
    final_proj = torch.nn.Linear(config.hidden_size, head.final_dim).to(device)
    label_embs = torch.nn.Parameter(torch.rand(head.num_classes[0], head.final_dim, device=device))
    params = [*model.parameters(), *final_proj.parameters(), label_embs]
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    data = {k: torch.as_tensor(v, device=device) for k, v in fake_batch(cfg, batch, samples).items()}
    frames = int(model._get_feat_extract_output_lengths(samples))  # noqa: SLF001
    m = cfg.masking
    mask = torch.as_tensor(_compute_mask_indices((batch, frames), m.mask_prob, m.mask_length,
                                                 min_masks=m.min_masks), device=device)
    targets = data["labels"][:, 0]
    index = torch.as_tensor(np.minimum(np.arange(frames) * head.label_rate / 50.0, targets.shape[1] - 1).astype(int),
                            device=device)
    targets = targets[:, index].long()
    autocast = dtype != "float32"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype, enabled=autocast):
            features = model.feature_extractor(data["input_values"]).transpose(1, 2)
            penalty = features.float().pow(2).mean()
            hidden = model.feature_projection(features)
            hidden = model._mask_hidden_states(hidden, mask_time_indices=mask)  # noqa: SLF001
            encoded = model.encoder(hidden).last_hidden_state
            proj = final_proj(encoded).float()
            logits = torch.cosine_similarity(proj[:, :, None], label_embs.float()[None, None], dim=-1) / head.logit_temp
            nll = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
            loss = nll + cfg.loss.features_pen * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="base")
    p.add_argument("--batch", type=int, default=None, help="per-device utterances (default: the recipe's)")
    p.add_argument("--seconds", type=float, default=250000 / SAMPLE_RATE, help="crop length (default 15.625 s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attention", default="auto", help="hubert-jax attention_impl")
    p.add_argument("--remat", default="none", help="hubert-jax remat_policy")
    p.add_argument("--peak-tflops", type=float, default=None)
    args = p.parse_args(argv)

    import torch

    jax, platform, device, kind, peak = start_devices(args.peak_tflops)
    print(f"device: {kind} ({platform}; torch on {device}); jax {jax.__version__}, torch {torch.__version__}; "
          f"dtype {args.dtype}; median of {args.repeats} interleaved steps; hubert-jax attention {args.attention}, "
          f"remat {args.remat}; torch: transformers sdpa")
    print("| model | batch x s | hubert-jax audio s/s | torch audio s/s | ratio jax/torch time | MFU jax | MFU torch |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        batch = args.batch or RECIPE[name][1]
        samples = int(args.seconds * SAMPLE_RATE)
        cfg = recipe_config(name, batch, args.seconds, args.dtype, args.attention, args.remat)
        calls = {"jax": jax_step(cfg, batch, samples), "torch": torch_step(cfg, batch, samples, args.dtype, device)}
        t = interleaved_medians(calls, args.repeats)
        audio = batch * samples / SAMPLE_RATE
        forward = gflop(name, batch, args.seconds)
        mfu = {k: f"{3 * forward / t[k] / 1e3 / peak:.1%}" if peak and forward else "n/a" for k in t}  # fwd + bwd
        print(f"| {name} | {batch} x {args.seconds:g} | {audio / t['jax']:.1f} | {audio / t['torch']:.1f} | "
              f"{t['jax'] / t['torch']:.2f} | {mfu['jax']} | {mfu['torch']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
