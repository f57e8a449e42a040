"""Inference speed: hubert-jax against transformers (PyTorch) on the same device and dtype, one table.

    python benchmarks/inference.py                                   # CPU: base, batch 1 x 10 s
    python benchmarks/inference.py --models base,large --batches 1,8,32 --dtype bfloat16   # a GPU
    python benchmarks/inference.py --models tiny --seconds 0.5 --repeats 1    # every path, in seconds (checks)
    python benchmarks/inference.py --corpus [--models base] [--limit N]      # the shipped corpus, see below
    python benchmarks/inference.py --stages [--batches 1 --seconds 3]      # each stage of the forward pass

Both sides are built from the same preset with random weights (speed does not depend on the values).
hubert-jax runs twice: under the benchmark's own `jax.jit`, and as the direct call `model(x)` a user
writes (which hubert-jax compiles once per input shape, hubert_jax/models/compiled.py).
Each cell is the median of --repeats timed calls after a warm-up (compilation excluded for JAX; the
first PyTorch call is excluded too). The contenders' calls are interleaved round by round, so a
machine whose speed drifts (shared CPUs, GPU clocks) slows every column alike. Audio seconds per second = batch x clip seconds / median time;
`ratio` = hubert-jax time / PyTorch time (below 1: hubert-jax is faster). MFU uses the forward FLOPs per
audio second of ../shared/REFERENCE.md section 3 (base 13.9 + 0.092 S GFLOP, large 35.8 + 0.246 S, S the
clip length) against --peak-tflops (default: 989 on H100/H200, none elsewhere).

--corpus: the shipped corpus' files (data/demo train and valid, mixed lengths), two jobs: layer-6 features and
greedy CTC transcripts, by a HubertForCTC of the preset with random weights, the same weights on both sides.
hubert-jax runs `inference.extract` / `inference.transcribe` twice in one process: the first pass includes
every compilation (no persistent cache), the second reuses them. transformers runs each file alone (its
feature extractor, then the model), and padded batches of --torch-batch files in length order, with the eager
and sdpa attention. Each cell is one pass, wall time; audio seconds per second, and each hubert-jax pass over
transformers' fastest setting of that job (`ratio` = time / fastest transformers time; below 1: faster).

--stages: where the time of one forward pass goes, stage by stage on the same input (the conv feature encoder,
the feature projection, the positional conv, encoder layer 0, the whole encoder, the whole model), hubert-jax
jitted against transformers sdpa, interleaved medians as above.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

from hubert_jax.lengths import SAMPLE_RATE

FLOPS_PER_AUDIO_SECOND = {"base": (13.9e9, 0.092e9), "large": (35.8e9, 0.246e9)}
PRESET = {"base": "hubert-base", "large": "hubert-large", "tiny": "hubert-base"}
# "tiny": hubert-base shrunk to seconds-fast sizes, for checking that a script runs (its speed means nothing)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)


def model_config(name: str):
    """The benchmark's model `name` (base, large, tiny) as a hubert-jax config."""
    from hubert_jax.config import preset

    config = preset(PRESET[name])
    return config.replace(**TINY) if name == "tiny" else config


def gflop(model: str, batch: int, seconds: float) -> float | None:
    """Forward GFLOP of `batch` clips of `seconds` (None for the tiny check model: no MFU)."""
    if model not in FLOPS_PER_AUDIO_SECOND:
        return None
    a, b = FLOPS_PER_AUDIO_SECOND[model]
    return batch * seconds * (a + b * seconds) / 1e9


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """{name: median seconds}: one warm-up call each, then `repeats` rounds of one timed call each."""
    for fn in calls.values():
        fn()  # warm-up: compilation / first-call allocations
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def jax_call(model_name: str, batch: int, seconds: float, dtype: str, attention_impl: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from hubert_jax.models import HubertModel

    model = HubertModel(model_config(model_name), rngs=nnx.Rngs(0), dtype=dtype, attention_impl=attention_impl)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x).last_hidden_state

    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, int(seconds * SAMPLE_RATE)), np.float32))
    # `model(x)` as a user writes it, no jit of their own: hubert-jax compiles it once per shape
    direct = lambda: model(x).last_hidden_state.block_until_ready()  # noqa: E731
    return (lambda: forward(state, x).block_until_ready()), direct


def torch_config(config, attn_implementation: str):
    """transformers' HubertConfig of our config, with the attention implementation to build."""
    import transformers

    out = transformers.HubertConfig(**{k: v for k, v in config.to_dict().items()
                                       if k not in ("architectures", "model_type", "transformers_version")})
    out._attn_implementation = attn_implementation  # noqa: SLF001 (transformers reads it when building the layers)
    return out


def torch_call(model_name: str, batch: int, seconds: float, dtype: str, impl: str, device: str):
    import torch
    import transformers

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = transformers.HubertModel(torch_config(model_config(model_name), impl))
    model = model.to(device=device, dtype=torch_dtype).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator).to(device=device, dtype=torch_dtype)

    def call():
        with torch.inference_mode():
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return call


def start_devices(peak_tflops: float | None):
    """Set our XLA flags, then start JAX: (jax, platform, torch device, device kind, peak TFLOP/s or None)."""
    from hubert_jax import xla_flags

    xla_flags.set_performance_flags()  # before JAX starts its backend
    import jax
    import torch

    platform = jax.devices()[0].platform
    device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
    kind = jax.devices()[0].device_kind
    peak = peak_tflops or (989.0 if any(n in kind for n in ("H100", "H200")) else None)
    return jax, platform, device, kind, peak


def corpus_files(limit: int | None):
    """The demo corpus' waveforms (train then valid), 16 kHz float32."""
    import os

    from hubert_jax.data.manifest import read_audio, read_manifest

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
    entries = [e for split in ("train", "valid") for e in read_manifest(os.path.join(demo, f"{split}.tsv"))]
    return [read_audio(e.path) for e in entries[:limit]]


CHARS = "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"


def ctc_models(name: str, impls: list[str]):
    """({impl: transformers HubertForCTC}, our HubertForCTC with the same weights, our Processor)."""
    import torch
    import transformers

    from hubert_jax.models import HubertForCTC
    from hubert_jax.processing import CTCTokenizer, FeatureExtractor, Processor
    from hubert_jax.weights.state import load_torch_state_dict

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(CHARS)}}
    config = model_config(name).replace(vocab_size=len(vocab))
    torch.manual_seed(0)
    theirs = {}
    for impl in impls:
        theirs[impl] = transformers.HubertForCTC(torch_config(config, impl)).eval()
        if impl != impls[0]:
            theirs[impl].load_state_dict(theirs[impls[0]].state_dict())
    ours = HubertForCTC(config)
    load_torch_state_dict(ours, theirs[impls[0]].state_dict())
    return theirs, ours, Processor(FeatureExtractor(do_normalize=True), CTCTokenizer(vocab))


def torch_passes(model, files, processor, layer: int, batch: int):
    """{(job, setting): seconds} of transformers over the files: each alone, and padded batches."""
    import numpy as np
    import torch

    def normalised(wave):
        return processor.feature_extractor([wave])["input_values"][0]

    def run(groups, job):
        start = time.perf_counter()
        with torch.inference_mode():
            for group in groups:
                x = [normalised(files[i]) for i in group]
                width = max(len(w) for w in x)
                values = np.zeros((len(x), width), np.float32)
                mask = np.zeros((len(x), width), np.int64)
                for row, w in enumerate(x):
                    values[row, : len(w)], mask[row, : len(w)] = w, 1
                inputs = {"input_values": torch.from_numpy(values)}
                if len(x) > 1:
                    inputs["attention_mask"] = torch.from_numpy(mask)
                if job == "features":
                    model.hubert(**inputs, output_hidden_states=True).hidden_states[layer].numpy()
                else:
                    processor.tokenizer.decode_logits(model(**inputs).logits.numpy())
        return time.perf_counter() - start

    alone = [[i] for i in range(len(files))]
    by_length = sorted(range(len(files)), key=lambda i: len(files[i]))
    batches = [by_length[i: i + batch] for i in range(0, len(files), batch)]
    return {(job, mode): run(groups, job) for job in ("features", "ctc")
            for mode, groups in (("alone", alone), (f"batches of {batch}", batches))}


def corpus_main(args) -> int:
    import torch
    import transformers

    from hubert_jax.inference import extract, transcribe

    jax, platform, device, kind, _ = start_devices(None)
    files = corpus_files(args.limit)
    seconds = sum(len(f) for f in files) / SAMPLE_RATE
    impls = [i for i in args.torch_impls.split(",") if i]
    print(f"device: {kind} ({platform}; torch {torch.get_num_threads()} threads); jax {jax.__version__}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}; {len(files)} files, {seconds:.0f} s of "
          f"audio, {min(len(f) for f in files) / SAMPLE_RATE:.1f}-{max(len(f) for f in files) / SAMPLE_RATE:.1f} s")
    for name in args.models.split(","):
        theirs, ours, processor = ctc_models(name, impls)
        layer = min(6, ours.config.num_hidden_layers)
        times = {}
        for impl, model in theirs.items():
            times.update({(job, f"transformers {impl}, {mode}"): t
                          for (job, mode), t in torch_passes(model, files, processor, layer, args.torch_batch).items()})
        for label in ("compile included", "compile excluded"):
            start = time.perf_counter()
            extract(ours.hubert, files, layer=layer)
            times[("features", f"hubert-jax extract, {label}")] = time.perf_counter() - start
            start = time.perf_counter()
            transcribe(ours, files, processor)
            times[("ctc", f"hubert-jax transcribe, {label}")] = time.perf_counter() - start
        print(f"\n{name}: layer-{layer} features and CTC transcripts")
        print("| job | setting | wall s | audio s/s | ratio to transformers' fastest |")
        print("|---|---|---|---|---|")
        for job in ("features", "ctc"):
            fastest = min(t for (j, s), t in times.items() if j == job and s.startswith("transformers"))
            for (j, setting), t in times.items():
                if j == job:
                    print(f"| {job} | {setting} | {t:.2f} | {seconds / t:.1f} | {t / fastest:.2f} |", flush=True)
    return 0


def stages_main(args) -> int:
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from hubert_jax.models import HubertModel

    jax, platform, device, kind, _ = start_devices(None)
    print(f"device: {kind} ({platform}; torch {torch.get_num_threads()} threads); median of {args.repeats} "
          f"interleaved rounds; ratio = hubert-jax time / transformers sdpa time")
    print("| model | batch x s | stage | hubert-jax ms | torch sdpa ms | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        config = model_config(name)
        graphdef, state = nnx.split(HubertModel(config, rngs=nnx.Rngs(0)))
        theirs = transformers.HubertModel(torch_config(config, "sdpa")).eval()
        for batch in map(int, args.batches.split(",")):
            wave = np.random.default_rng(0).standard_normal((batch, int(args.seconds * SAMPLE_RATE)), np.float32)
            with torch.inference_mode():
                t_wave = torch.from_numpy(wave)
                t_feats = theirs.feature_extractor(t_wave).transpose(1, 2)
                t_hidden = theirs.feature_projection(t_feats)
                t_hidden = t_hidden[0] if isinstance(t_hidden, tuple) else t_hidden
            stages = {  # name: (our function of the model and its input, our input, their call)
                "conv feature encoder": (lambda m, x: m.feature_extractor(x), wave,
                                         lambda: theirs.feature_extractor(t_wave)),
                "feature projection": (lambda m, x: m.feature_projection(x)[0], t_feats.numpy(),
                                       lambda: theirs.feature_projection(t_feats)),
                "positional conv": (lambda m, x: m.encoder.pos_conv_embed(x), t_hidden.numpy(),
                                    lambda: theirs.encoder.pos_conv_embed(t_hidden)),
                "encoder layer 0": (lambda m, x: m.encoder.layers[0](x), t_hidden.numpy(),
                                    lambda: theirs.encoder.layers[0](t_hidden)),
                "encoder": (lambda m, x: m.encoder(x).last_hidden_state, t_hidden.numpy(),
                            lambda: theirs.encoder(t_hidden)),
                "whole model": (lambda m, x: m(x).last_hidden_state, wave, lambda: theirs(t_wave)),
            }
            for stage, (ours, x, call) in stages.items():
                fn = jax.jit(lambda s, x, ours=ours: ours(nnx.merge(graphdef, s), x))
                x = jax.numpy.asarray(x)

                def torch_call_():
                    with torch.inference_mode():
                        call()

                t = interleaved_medians({"jax": lambda: fn(state, x).block_until_ready(), "torch": torch_call_},
                                        args.repeats)
                print(f"| {name} | {batch} x {args.seconds:g} | {stage} | {t['jax'] * 1e3:.1f} | "
                      f"{t['torch'] * 1e3:.1f} | {t['jax'] / t['torch']:.2f} |", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="base")
    p.add_argument("--batches", default="1")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-impls", default="eager,sdpa",
                   help="transformers attn_implementation values (flash_attention_2 is added on CUDA when installed)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--attention", default="auto", help="hubert-jax attention_impl (auto, xla, cudnn, pallas)")
    p.add_argument("--corpus", action="store_true", help="the shipped corpus' files: features and transcripts")
    p.add_argument("--stages", action="store_true", help="each stage of one forward pass against transformers")
    p.add_argument("--limit", type=int, default=None, help="--corpus: the first N files only")
    p.add_argument("--torch-batch", type=int, default=8, help="--corpus: files per transformers padded batch")
    args = p.parse_args(argv)
    if args.corpus:
        return corpus_main(args)
    if args.stages:
        return stages_main(args)

    import torch
    import transformers

    jax, platform, device, kind, peak = start_devices(args.peak_tflops)
    print(f"device: {kind} ({platform}; torch on {device}, {torch.get_num_threads()} threads); jax {jax.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; dtype {args.dtype}; "
          f"median of {args.repeats} interleaved rounds; hubert-jax attention {args.attention}")
    impls = [i for i in args.torch_impls.split(",") if i]
    if device == "cuda" and importlib.util.find_spec("flash_attn") and "flash_attention_2" not in impls:
        impls.append("flash_attention_2")  # transformers' FA2 path (bf16/fp16 only), when the package is there
    print("| model | batch x s | hubert-jax audio s/s | direct call audio s/s | "
          + " | ".join(f"torch {i} audio s/s" for i in impls)
          + " | " + " | ".join(f"ratio jax/{i}" for i in impls) + " | MFU jax |")
    print("|---" * (4 + 2 * len(impls) + 1) + "|")
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            audio = batch * args.seconds
            jitted, direct = jax_call(name, batch, args.seconds, args.dtype, args.attention)
            calls = {"jax": jitted, "direct": direct}
            for impl in impls:
                try:
                    calls[impl] = torch_call(name, batch, args.seconds, args.dtype, impl, device)
                except (ImportError, ValueError) as e:  # e.g. flash_attention_2 not installed
                    print(f"  torch {impl}: {e}", file=sys.stderr)
            t_torch = interleaved_medians(calls, args.repeats)
            t_jax, t_direct = t_torch.pop("jax"), t_torch.pop("direct")
            flop = gflop(name, batch, args.seconds)
            mfu = f"{flop / t_jax / 1e3 / peak:.1%}" if peak and flop else "n/a"
            cells = [f"{audio / t_torch[i]:.1f}" if i in t_torch else "-" for i in impls]
            ratios = [f"{t_jax / t_torch[i]:.2f}" if i in t_torch else "-" for i in impls]
            print(f"| {name} | {batch} x {args.seconds:g} | {audio / t_jax:.1f} | {audio / t_direct:.1f} | "
                  + " | ".join(cells) + " | "
                  + " | ".join(ratios) + f" | {mfu} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
