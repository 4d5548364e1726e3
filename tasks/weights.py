"""Published weights: where a model's file comes from, where the libraries cache it, fetching it.

Files live where the libraries themselves keep them, so a run offline finds what a fetch online
left: timm models in the Hugging Face hub cache (``hf_hub_download``, as
``timm.create_model(pretrained=True)`` does), mm models in torch hub's checkpoint folder (where
mmengine's ``load_checkpoint`` puts a URL it downloads). Offline ($HF_HUB_OFFLINE, as the tests
and tox set it) nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def offline() -> bool:
    """$HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class WeightFile:
    """One published weight file: ``source`` is a URL or ``hf://REPO/FILE``; ``path`` is where it
    is (or will be) cached."""

    model: str
    source: str
    path: Path | None  # None: a hub file that is not cached yet (the hub decides where it goes)

    @property
    def cached(self) -> bool:
        return self.path is not None and self.path.is_file()

    def fetch(self) -> Path:
        """Download into the library's cache (a no-op when cached); raises offline."""
        if self.cached:
            return self.path
        if offline():
            raise FileNotFoundError(f"{self.model}: weights not cached and HF_HUB_OFFLINE is set: run "
                                    f"`clamp-bench fetch` online, or pass --checkpoint PATH ({self.source})")
        if self.source.startswith("hf://"):
            from huggingface_hub import hf_hub_download

            repo, filename = self.source[len("hf://"):].rsplit("/", 1)
            return Path(hf_hub_download(repo, filename))
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.source, str(self.path))  # writes a temporary file, then renames
        return self.path


def hub_file(model: str, hub_id: str, filename: str = "model.safetensors") -> WeightFile:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_id, filename)
    return WeightFile(model, f"hf://{hub_id}/{filename}", Path(path) if isinstance(path, str) else None)


def url_file(model: str, url: str) -> WeightFile:
    import torch

    return WeightFile(model, url, Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name)
