"""`Model.from_pretrained(dir)` and `model.save_pretrained(dir)` on every model class (logic in
hubert_jax.pretrained, imported on use so the models need no safetensors or huggingface_hub)."""

from __future__ import annotations


class PretrainedMixin:
    """from_pretrained / save_pretrained on a model class (hubert_jax.pretrained does the work)."""

    @classmethod
    def from_pretrained(cls, path_or_id, **kwargs):
        """Load config.json and weights (hubert-jax, or transformers PyTorch converted on the fly)."""
        from hubert_jax.pretrained import from_pretrained

        return from_pretrained(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory, **kwargs) -> str:
        """Write config.json + flax_model.safetensors (sharded past max_shard_bytes)."""
        from hubert_jax.pretrained import save_pretrained

        return save_pretrained(self, directory, **kwargs)
