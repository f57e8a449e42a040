"""What a training task is: the interface the loop and the Trainer call, with the defaults most tasks keep,
and the pretraining input (random crops of a manifest, with or without frame labels) that several share.

A task is built from the run's config and says
- `data(workdir)`: the train and valid sources and their `DataConfig`s (it may record what its model depends
  on in the workdir: fine-tuning's vocabulary); `open_workdir(workdir)` reads that back without the data;
- `build()`: the model (called abstractly first); `setup(abstract, mesh, rules)`: anything derived from it,
  and `frozen` / `frozen_shardings`, arrays the steps read but do not train (a distillation teacher);
- `forward(model, batch, key, step, deterministic, frozen)`: (loss, metrics) of one batch. Every scalar
  metric of a train step is logged (`log_keys`: those the console line shows); `summarize` turns the eval
  steps' metrics into validation figures;
- `update_mask(params, step)`: which parameters a step trains (None: all);
- `initial_params(params, frozen)`: a fresh run's starting parameters (None: the init's);
- `load_initial(model, directory)`: --config.model.init_from into the (host) model;
- `export(model, directory)`: the trained model's files into `directory`; `export_when_done`: whether the
  run writes `{workdir}/model` when it reaches its last step; `export_problem(model)`: why `export` cannot
  write this model (checked on the abstract model before the first step, not at the last).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hubert_jax import storage
from hubert_jax.data.pipeline import DataConfig, LabeledAudio


@dataclasses.dataclass
class Data:
    """What a task's data() gives the run: the train source and its DataConfig, and the valid ones if any."""
    train: object  # a random-access source (hubert_jax/data/pipeline.py, data/targets.py)
    train_config: DataConfig
    valid: object | None = None
    valid_config: DataConfig | None = None
    samples: int = 0  # samples of one row of an unbucketed batch (for the run's first log line)


class Task:
    """A training objective: its config sections, data, model, loss and export (the interface is in this module's
    docstring). Subclasses register with @register_task."""
    name = ""  # config.task, set by @register_task (hubert_jax/training/tasks/__init__.py)
    # the config sections this task (and its subclasses) reads beyond the common ones, with their defaults:
    # pretraining_defaults() adds them, and another task's config that changes them is refused
    sections: dict[str, dict] = {}
    log_keys: tuple[str, ...] = ("loss",)  # the train metrics the console line shows (all are logged)
    # a finished run writes its model directory, {workdir}/model, with `export` (the default needs a model with a
    # transformers config: a task whose model is its own overrides `export` or sets this False; the run refuses
    # to start otherwise, see export_problem)
    export_when_done = True
    frozen = None
    frozen_shardings = None

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def config_sections(cls) -> dict[str, dict]:
        """The sections declared by this class and the classes it derives from."""
        out: dict[str, dict] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("sections", {}))
        return out

    # ------------------------------------------------------------------ data
    def data(self, workdir: str | None) -> Data:
        """The train (and valid) sources of the run; `workdir` is where the task may record what its model depends on."""
        raise NotImplementedError

    def open_workdir(self, workdir: str) -> None:
        """What `data` recorded in the workdir, for building the model without reading the data."""

    # ------------------------------------------------------------------ model and steps
    def build(self):
        """The model this task trains (called abstractly first, under nnx.eval_shape)."""
        raise NotImplementedError

    def setup(self, abstract, mesh, rules) -> None:
        """Task attributes from the abstract model (before the Trainer makes its shardings)."""

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        """(loss, metrics) of one batch; `step` (traced) is the train state's step."""
        raise NotImplementedError

    def summarize(self, metrics: list[dict]) -> dict:
        """One validation figure per metric from the per-batch metrics."""
        return batch_means(metrics, *metrics[0])

    def update_mask(self, params, step):
        """Which parameters this step trains, as a pytree of booleans like params (None: all)."""
        return None

    def initial_params(self, params, frozen):
        """A fresh run's starting parameters (None: the model's initialisation)."""
        return None

    # ------------------------------------------------------------------ weights in and out
    def load_initial(self, model, directory: str) -> None:
        """The base model's weights from `directory` (a head the directory lacks stays freshly initialised)."""
        from hubert_jax.pretrained import load_weights_into

        load_weights_into(model.base_model, directory)

    def export(self, model, directory: str) -> None:
        """A directory that both `FlaxAutoModel*.from_pretrained` (flax_model.safetensors) and transformers
        (model.safetensors) load: by default the model's own files and transformers' of the same model."""
        from hubert_jax.export import write_transformers_files
        from hubert_jax.pretrained import write_model_files

        write_transformers_files(model, directory)
        write_model_files(model, directory)

    def export_problem(self, model) -> str | None:
        """Why `export` cannot write `model` (abstract or not), or None. The default export needs the model's
        `config` to be a transformers-style config (hubert_jax.config.SpeechConfig); an overridden `export`
        answers for itself."""
        from hubert_jax.config import SpeechConfig

        if type(self).export is not Task.export or isinstance(getattr(model, "config", None), SpeechConfig):
            return None
        return (f"config.task={self.name!r}: its model, {type(model).__name__}, has no `config` (a "
                f"hubert_jax.config.SpeechConfig), so the default export cannot write {{workdir}}/model at the end "
                f"of the run: give the task an `export(model, directory)` of its own, or set its "
                f"`export_when_done = False`")


def batch_means(metrics: list[dict], *keys: str) -> dict:
    """The mean over the evaluation's batches of each of `keys` (what the tasks' `summarize` report)."""
    return {k: float(np.mean([m[k] for m in metrics])) for k in keys}


def check_family(cfg, family: str, recipe: str) -> None:
    """A task that trains one family's encoder refuses a config whose model is another's."""
    from hubert_jax.training.resolve import model_config

    model_type = model_config(cfg.model).model_type
    if model_type != family:
        raise ValueError(f"config.task={cfg.task!r} trains a {family} encoder, but config.model (preset "
                         f"{cfg.model.preset!r}, init_from {cfg.model.init_from!r}) makes a {model_type} model: "
                         f"use a {family}-* preset ({recipe})")


# ----------------------------------------------------------------------------- pretraining input
def crop_config(cfg, split: str, *, labels: bool) -> DataConfig:
    """The pretraining crops of `config.data.{split}`, with its frame labels (`labels`: each set's .km file must
    exist) or without."""
    part = cfg.data[split]
    paths = tuple(part.labels) if labels else ()
    if labels and part.manifest:
        given = [p for p in paths if p]
        missing = [p for p in given if not storage.isfile(p)]
        if not given or missing:
            what = "no label file given" if not given else ", ".join(f"{p!r} does not exist" for p in missing)
            raise FileNotFoundError(
                f"config.data.{split}.labels: {what}: data.{split}.manifest ({part.manifest}) needs one .km file "
                f"per label set, lines in manifest order (python -m hubert_jax.labels label ... --out FILE.km)")
    return DataConfig(manifest=part.manifest, labels=paths, label_rate=cfg.model.head.label_rate,
                      crop_samples=cfg.data.crop_samples, min_samples=cfg.data.min_samples,
                      normalize=cfg.data.normalize, buckets=tuple(cfg.data.get("buckets", ())),
                      max_tokens=int(cfg.data.get("max_tokens", 0)))


def crop_data(cfg, *, labels: bool) -> Data:
    """Random crops of the train and (when given) valid manifests; with `labels`, their frame labels, checked
    against the heads' cluster counts. With `data.languages.manifests` (label-free tasks), the train split
    is those languages, sampled as XLSR does (hubert_jax/data/languages.py)."""
    data = Data(train=None, train_config=crop_config(cfg, "train", labels=labels), samples=cfg.data.crop_samples)
    languages = cfg.data.get("languages", {}).get("manifests", ())
    if languages:
        data.train = language_mix(cfg, data.train_config, tuple(languages), labels=labels)
        data.train_config = dataclasses.replace(data.train_config, manifest=" + ".join(languages))  # for messages
    else:
        data.train = LabeledAudio(data.train_config, need_labels=labels)
    if cfg.data.valid.manifest:
        data.valid_config = crop_config(cfg, "valid", labels=labels)
        data.valid = LabeledAudio(data.valid_config, need_labels=labels)
    if labels:
        for source in (data.train, data.valid):
            if source is not None:
                source.check_num_classes(tuple(cfg.model.head.num_classes), cfg.model.head.get("label_offset", 0))
    return data


def language_mix(cfg, config: DataConfig, manifests: tuple[str, ...], *, labels: bool):
    """The multi-language source of data.languages (XLS-R's sampling with alpha) for `manifests`."""
    import logging

    from hubert_jax.data.languages import LanguageMix

    if labels:
        raise ValueError("config.data.languages: multilingual sampling reads no frame labels; it is for the "
                         "label-free tasks (wav2vec2)")
    if cfg.data.train.manifest:
        raise ValueError(f"config.data.train.manifest ({cfg.data.train.manifest}) and config.data.languages."
                         f"manifests both given: the languages' manifests are the train split, leave the other empty")
    sources = [LabeledAudio(dataclasses.replace(config, manifest=m), need_labels=False) for m in manifests]
    mix = LanguageMix(sources, list(manifests), alpha=float(cfg.data.languages.alpha), seed=cfg.seed)
    logging.getLogger(__name__).info("languages (alpha %s): %s", cfg.data.languages.alpha, ", ".join(
        f"{m} p={p:.3f}" for m, p in zip(manifests, mix.probabilities)))
    return mix
