"""A linear probe on frozen features: each utterance's hidden states (every layer) averaged over its frames,
standardised with the training split's statistics, and a softmax-regression head trained on them (full
batch, Adam, L2), scored by accuracy on another split. What SUPERB's speaker identification measures,
with a linear head: how much of a label (speaker, language) a frozen model's features carry.

    python -m hubert_jax.probe --model DIR --train data/demo/train.tsv data/demo/train.spk \
        --valid data/demo/valid.tsv data/demo/valid.spk
"""

from __future__ import annotations

import argparse

import numpy as np


def utterance_features(model, manifest: str) -> np.ndarray:
    """(utterances, layers + 1, hidden): the mean over frames of every hidden state, manifest order."""
    from hubert_jax.data.manifest import read_entry_audio, read_manifest
    from hubert_jax.inference import extract

    audio = [read_entry_audio(manifest, e, normalize=False) for e in read_manifest(manifest)]
    every_layer = range(model.config.num_hidden_layers + 1)
    return np.stack([f.mean(1) for f in extract(model, audio, layer=every_layer)])  # one forward pass


def read_classes(path: str, count: int) -> list[str]:
    from hubert_jax import storage

    with storage.open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    if len(lines) != count:
        raise ValueError(f"{path}: {len(lines)} lines, expected one per utterance ({count})")
    return lines


def linear_probe(train_x, train_y, valid_x, valid_y, *, steps: int = 600, lr: float = 1e-2,
                 weight_decay: float = 1e-3) -> float:
    """Valid accuracy of a softmax regression on (n, d) features (deterministic: zero init, full batch)."""
    import jax
    import jax.numpy as jnp
    import optax

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, v = jnp.asarray((train_x - mean) / std), jnp.asarray((valid_x - mean) / std)
    y = jnp.asarray(train_y)
    classes = int(max(train_y.max(), valid_y.max())) + 1
    params = {"w": jnp.zeros((x.shape[1], classes)), "b": jnp.zeros(classes)}
    tx = optax.adam(lr)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()
        return nll + weight_decay * jnp.sum(p["w"] ** 2)

    def step(_, carry):
        p, s = carry
        updates, s = tx.update(jax.grad(loss)(p), s)
        return optax.apply_updates(p, updates), s

    params, _ = jax.jit(lambda c: jax.lax.fori_loop(0, steps, step, c))((params, tx.init(params)))  # one call
    predicted = np.asarray(jnp.argmax(v @ params["w"] + params["b"], -1))
    return float(np.mean(predicted == valid_y))


def probe(model, train: tuple[str, str], valid: tuple[str, str], *, folds: int = 5, seed: int = 0) -> dict:
    """The probe's accuracy for `model` (a base model) on (manifest, one label per line) pairs, the head
    reading every layer's mean features side by side: `valid`, trained on the train split and scored on
    the valid one; `cross_validated`, the mean over `folds` folds of both splits' utterances together
    (each scored by a head trained on the others; steadier on a small valid split)."""
    features, labels = [], []
    for manifest, targets in (train, valid):
        x = utterance_features(model, manifest)
        features.append(x.reshape(len(x), -1))
        labels.append(read_classes(targets, len(x)))
    unknown = sorted(set(labels[1]) - set(labels[0]))
    if unknown:
        raise ValueError(f"{valid[1]}: labels {unknown} are not in {train[1]}")
    index = {c: i for i, c in enumerate(sorted(set(labels[0])))}
    codes = [np.array([index[c] for c in split]) for split in labels]
    out = {"valid": linear_probe(features[0], codes[0], features[1], codes[1])}
    x, y = np.concatenate(features), np.concatenate(codes)
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    out["cross_validated"] = float(np.mean([linear_probe(x[fold != k], y[fold != k], x[fold == k], y[fold == k])
                                            for k in range(folds)]))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hubert_jax.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory (hubert-jax or transformers)")
    parser.add_argument("--train", nargs=2, required=True, metavar=("MANIFEST", "LABELS"))
    parser.add_argument("--valid", nargs=2, required=True, metavar=("MANIFEST", "LABELS"))
    args = parser.parse_args(argv)
    from hubert_jax.auto import FlaxAutoModel

    accuracy = probe(FlaxAutoModel.from_pretrained(args.model), tuple(args.train), tuple(args.valid))
    print(f"linear probe accuracy: valid {accuracy['valid']:.3f}, 5-fold cross-validated over both splits "
          f"{accuracy['cross_validated']:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
