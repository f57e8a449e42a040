"""convert_pt_to_flax.py: PyTorch checkpoints -> hubert-jax directories, and back with --to-pytorch.

    python convert_pt_to_flax.py SRC OUT [--overwrite] [--no-verify]
    python convert_pt_to_flax.py SRC OUT --to-pytorch
    python convert_pt_to_flax.py FINETUNED.pt OUT [--dict dict.ltr.txt] [--w2v-checkpoint PRETRAINED.pt]
    python convert_pt_to_flax.py SRC OUT.pt --to-fairseq [--clusters K]

SRC (forward): a transformers PyTorch model directory (config.json + model.safetensors or
pytorch_model.bin, sharded or not), or a fairseq HuBERT / wav2vec 2.0, unilm WavLM or s3prl
DistilHuBERT checkpoint file (read without running any code from it). With --to-pytorch, SRC is a
hubert-jax directory and OUT a transformers directory. With --to-fairseq, SRC is a hubert-jax or transformers
directory of a HuBERT or wav2vec 2.0 model (base, pretraining heads or CTC) and OUT a fairseq checkpoint file
(hubert_jax/convert/to_fairseq.py says what each kind becomes). OUT is written atomically and an existing non-empty OUT is refused
unless --overwrite. Unless --no-verify, outputs are compared with transformers before OUT is written.
"""

from __future__ import annotations

import argparse
import os
import re
import posixpath
import sys
import tempfile

import numpy as np

from hubert_jax import storage
from hubert_jax.lengths import SAMPLE_RATE

VERIFY_TOL = 1e-4


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected e.g. 500MB, 2GB or a byte count")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2] or " "))


def _torch_model(directory: str):
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    return cls.from_pretrained(directory).eval()


def compare_with_transformers(model, torch_dir: str, seconds: float = 1.0) -> float:
    """Max abs difference of the main output on a padded random batch (raises ImportError without torch)."""
    import jax.numpy as jnp
    import torch

    tmodel = _torch_model(torch_dir)
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.RandomState(0)
    audio = rng.randn(2, n).astype(np.float32)
    mask = np.ones((2, n), np.int64)
    mask[1, n * 2 // 3:] = 0
    audio[1, n * 2 // 3:] = 0.0
    with torch.no_grad():
        tout = tmodel(torch.tensor(audio), attention_mask=torch.tensor(mask))
    jout = model(jnp.asarray(audio), attention_mask=jnp.asarray(mask))
    key = next(k for k in ("logits", "last_hidden_state", "projected_states") if getattr(jout, k, None) is not None)
    theirs = getattr(tout, key).float().numpy()
    return float(np.max(np.abs(theirs - np.asarray(getattr(jout, key), np.float32))))


def _verify(model, torch_dir: str, no_verify: bool) -> None:
    if no_verify:
        return
    try:
        diff = compare_with_transformers(model, torch_dir)
    except ImportError:
        print("verification skipped: torch/transformers not installed (--no-verify to silence)", file=sys.stderr)
        return
    print(f"max abs difference against transformers: {diff:.3g}")
    if not diff <= VERIFY_TOL:
        raise SystemExit(f"verification failed: outputs differ by {diff:.3g} (> {VERIFY_TOL})")


def _to_fairseq(parser, args) -> int:
    from hubert_jax.convert.to_fairseq import checkpoint_digest, export_directory

    if args.to_pytorch:
        parser.error("--to-fairseq and --to-pytorch are two different outputs: give one")
    if not os.path.isdir(args.src):
        parser.error(f"--to-fairseq takes a hubert-jax or transformers model directory as SRC, not {args.src}")
    if storage.isdir(args.out):
        parser.error(f"{args.out} is a directory: --to-fairseq writes one checkpoint file (e.g. {args.out}/model.pt)")
    if args.clusters is not None and args.clusters < 1:
        parser.error(f"--clusters {args.clusters}: expected a positive cluster count")
    try:
        if storage.is_remote(args.out):  # written here, then uploaded whole
            if storage.exists(args.out) and not args.overwrite:
                raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
            with tempfile.TemporaryDirectory(prefix="hubert-jax-export-") as tmp:
                local = os.path.join(tmp, posixpath.basename(args.out))
                ckpt = export_directory(args.src, local, clusters=args.clusters)
                storage.upload_file(local, args.out)
        else:
            ckpt = export_directory(args.src, args.out, overwrite=args.overwrite, clusters=args.clusters)
    except FileExistsError as e:
        parser.error(str(e))
    cfg = ckpt["cfg"]
    print(f"wrote {args.out}: fairseq {cfg['model']['_name']} / {cfg['task']['_name']} (content digest "
          f"{checkpoint_digest(ckpt)[:16]}; load it with fairseq's checkpoint_utils.load_model_ensemble_and_task)")
    return 0


def main(argv=None) -> int:
    from hubert_jax.cli_errors import prog_name

    parser = argparse.ArgumentParser(prog=prog_name("convert_pt_to_flax.py"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--to-pytorch", action="store_true", help="hubert-jax directory -> transformers directory")
    parser.add_argument("--to-fairseq", action="store_true", help="hubert-jax or transformers directory -> a fairseq "
                        "checkpoint file that fairseq loads and keeps training")
    parser.add_argument("--clusters", type=int, default=None, help="--to-fairseq of a base HuBERT (no pretraining "
                        "heads): the clusters of the new label set fairseq's heads are made for (default 500)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison with transformers")
    parser.add_argument("--dict", dest="dictionary", help="fairseq dict.ltr.txt of a fine-tuned CTC checkpoint: "
                        "written as vocab.json (with a feature extractor config); without it, the target "
                        "dictionary the checkpoint carries is used")
    parser.add_argument("--w2v-checkpoint", help="the pretrained checkpoint a fine-tuned one was trained from, "
                        "for files whose cfg.model.w2v_args is None (the encoder's settings live there)")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("2GB"),
                        help="shard weights past this size (e.g. 500MB)")
    args = parser.parse_args(argv)

    out = storage.absolute(args.out)
    if not args.to_fairseq and storage.listdir(out) and not args.overwrite:
        parser.error(f"{out} exists and is not empty; pass --overwrite to replace it")
    if not storage.exists(args.src):
        parser.error(f"{args.src}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix="hubert-jax-convert-") as staging:
        args.src = _local(args.src, staging)  # a gs:// SRC is read from a local copy; a gs:// OUT written through
        return _to_fairseq(parser, args) if args.to_fairseq else _convert(parser, args, out)


def _local(src: str, staging: str) -> str:
    """SRC itself, or for gs:// a copy of the object or folder in `staging`."""
    if not storage.is_remote(src):
        return src
    if storage.isfile(src):
        local = os.path.join(staging, posixpath.basename(src))
        storage.download_file(src, local)
        return local
    return storage.download_folder(src, os.path.join(staging, posixpath.basename(src.rstrip("/")) or "src"))


def _convert(parser, args, out: str) -> int:
    from hubert_jax import pretrained
    from hubert_jax.convert.original import convert_original_checkpoint
    from hubert_jax.export import copy_processor_files, write_transformers_files

    if args.clusters is not None:
        parser.error("--clusters goes with --to-fairseq")
    if os.path.isfile(args.src):  # fairseq / unilm / s3prl checkpoint
        if args.to_pytorch:
            parser.error("--to-pytorch takes a hubert-jax directory as SRC")
        convert_original_checkpoint(args.src, out, max_shard_bytes=args.max_shard_size, overwrite=args.overwrite,
                                    dictionary=args.dictionary, w2v_checkpoint=args.w2v_checkpoint)
        print(f"wrote {out} (no reference run: fairseq itself is not a dependency)")
        return 0

    from hubert_jax.auto import load_any

    model = load_any(args.src)
    if args.to_pytorch:
        def fill(tmp):
            write_transformers_files(model, tmp, max_shard_bytes=args.max_shard_size)
            copy_processor_files(args.src, tmp)
            _verify(model, tmp, args.no_verify)
    else:
        _verify(model, args.src, args.no_verify or pretrained.io.find_weights(args.src)[0] != "torch")

        def fill(tmp):
            pretrained.write_model_files(model, tmp, max_shard_bytes=args.max_shard_size)
            copy_processor_files(args.src, tmp)

    pretrained.write_directory(out, fill, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
