"""Latent caching: encode each (image, bucket, flip) once with the VAE, keep it in memory and optionally on disk.

A cache entry's key covers everything the latent depends on: the image file's bytes (editing an image invalidates
it), the bucket, the flip, the VAE (its config and a checksum of some weights), the encode dtype and the version of
the crop code below. Disk entries are ``cache_dir/<key>.safetensors``, written atomically so an interrupted run never
leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.contract.atomic import atomic_path
from training.contract.errors import UserError
from training.data.images import fit_to_bucket, load_image, to_tensor

# Bump when load_image / fit_to_bucket / to_tensor change what pixels reach the VAE: old cache files become misses.
PREPROCESS_VERSION = "cover-center-crop-lanczos-v1"
Job = tuple[Path, tuple[int, int], bool]  # (image path, bucket (w, h), flip)


class LatentCache:
    def __init__(self, vae, cache_dir: Path | None, device: torch.device | str, dtype: torch.dtype) -> None:
        self.vae = vae
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory: dict[str, torch.Tensor] = {}
        self.vae_id = vae_identity(vae)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for every SD VAE
        self._file_hashes: dict[tuple[str, int, int], str] = {}
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path, bucket: tuple[int, int], flip: bool) -> str:
        parts = [
            self._file_hash(Path(path)),
            f"{bucket[0]}x{bucket[1]}",
            f"flip={int(flip)}",
            self.vae_id,
            str(self.dtype),
            PREPROCESS_VERSION,
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def _file_hash(self, path: Path) -> str:
        # Memoised by (path, mtime, size) so each file is read once per run, yet an edit during the run still counts.
        st = path.stat()
        memo = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if memo not in self._file_hashes:
            self._file_hashes[memo] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._file_hashes[memo]

    def expected_shape(self, bucket: tuple[int, int]) -> tuple[int, int, int]:
        return (self.vae.config.latent_channels, bucket[1] // self.factor, bucket[0] // self.factor)

    def get(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor | None:
        """The cached latent (CPU float32, scaled) from memory or disk, or None if it was never encoded."""
        key = self.key(path, bucket, flip)
        if key not in self.memory:
            loaded = self._load(key, bucket)
            if loaded is None:
                return None
            self.memory[key] = loaded
        return self.memory[key]

    def _load(self, key: str, bucket: tuple[int, int]) -> torch.Tensor | None:
        if self.cache_dir is None:
            return None
        file = self.cache_dir / f"{key}.safetensors"
        if not file.is_file():
            return None
        try:
            latent = load_file(str(file))["latents"]
        except Exception:  # a damaged or foreign file is a miss, it gets re-encoded and overwritten
            return None
        if tuple(latent.shape) != self.expected_shape(bucket) or not torch.isfinite(latent).all():
            return None
        return latent.float()

    def _store(self, key: str, latent: torch.Tensor, path: Path) -> None:
        self.memory[key] = latent
        if self.cache_dir is None:
            return
        with atomic_path(self.cache_dir / f"{key}.safetensors") as tmp:
            save_file({"latents": latent.contiguous()}, str(tmp), metadata={"image": str(path)})

    def encode_all(
        self,
        jobs: Sequence[Job],
        batch_size: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Make sure every ``(path, bucket, flip)`` is cached; encode the misses in same-bucket batches.

        Returns how many latents were freshly encoded. ``progress(done, total)`` is called after each batch.
        """
        todo: dict[tuple[int, int], list[tuple[str, Job]]] = defaultdict(list)
        for job in dict.fromkeys(jobs):
            if self.get(*job) is None:
                todo[job[1]].append((self.key(*job), job))
        total = sum(len(v) for v in todo.values())
        done = 0
        for entries in todo.values():
            for start in range(0, len(entries), max(1, batch_size)):
                chunk = entries[start : start + max(1, batch_size)]
                for (key, (path, _, _)), latent in zip(chunk, self._encode([j for _, j in chunk]), strict=True):
                    self._store(key, latent, path)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return total

    @torch.no_grad()
    def _encode(self, jobs: list[Job]) -> torch.Tensor:
        pixels = torch.stack([to_tensor(fit_to_bucket(load_image(p), b)[0], flip) for p, b, flip in jobs])
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        # The mean, not a sample: a cached sample would freeze one draw of noise for the whole run (no augmentation
        # gained, kohya does this), while the mean is deterministic, so a cache hit equals a fresh encode. The SD
        # VAE's posterior std is tiny, so the two differ by far less than the noise the training adds anyway.
        latents = dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            latents = latents - shift
        latents = (latents * self.vae.config.scaling_factor).float().cpu()
        for (path, _, _), latent in zip(jobs, latents, strict=True):
            if not torch.isfinite(latent).all():
                raise UserError(
                    f"the VAE produced NaN/inf latents for {path} (a known fp16 VAE failure): "
                    "use mixed_precision bf16 or a fp32 VAE"
                )
        return latents


def vae_identity(vae) -> str:
    """A short fingerprint of a VAE: its config plus a checksum of a few weight tensors (a fine-tuned VAE with the
    same config, e.g. a swapped-in 'vae-ft-mse', must not reuse another VAE's latents)."""
    # Keys like "_name_or_path" say where the VAE was loaded from, not what it is: leave them out.
    settings = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config = json.dumps(settings, sort_keys=True, default=str)
    h = hashlib.sha256(config.encode())
    params = list(vae.state_dict().items())
    for name, tensor in (params[0], params[len(params) // 2], params[-1]) if params else ():
        sample = tensor.detach().flatten()[:4096].float().cpu().contiguous()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
