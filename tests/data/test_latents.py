"""Latent cache: disk hits skip the VAE, edits invalidate, cached equals fresh, NaN latents are a user error."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline, make_image_dataset

from training.contract.errors import UserError
from training.data.dataset import TrainDataset, collate
from training.data.folder import scan_dataset
from training.data.latents import LatentCache
from training.data.subset import SubsetOptions


@pytest.fixture(scope="module")
def vae():
    return build_tiny_pipeline("sd1").vae.eval()


class CountingVAE:
    """Wraps a VAE and counts encode calls (a cache hit must not reach the VAE)."""

    def __init__(self, vae):
        self.inner, self.config, self.calls = vae, vae.config, 0

    def encode(self, x):
        self.calls += 1
        return self.inner.encode(x)

    def state_dict(self):
        return self.inner.state_dict()


def _jobs(root, flip=False):
    return [(it.path, (64, 64), flip) for it in scan_dataset(root).items]


def test_second_run_hits_disk_and_matches_fresh_encode(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"1_a": 3})
    jobs = _jobs(root)
    first = LatentCache(CountingVAE(vae), tmp_path / "cache", "cpu", torch.float32)
    progress = []
    assert first.encode_all(jobs, batch_size=2, progress=lambda d, t: progress.append((d, t))) == 3
    assert first.vae.calls == 2 and progress == [(2, 3), (3, 3)]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))

    second = LatentCache(CountingVAE(vae), tmp_path / "cache", "cpu", torch.float32)
    assert second.encode_all(jobs, batch_size=2) == 0
    assert second.vae.calls == 0
    nocache = LatentCache(vae, None, "cpu", torch.float32)
    nocache.encode_all(jobs, batch_size=1)
    for job in jobs:
        cached = second.get(*job)
        assert cached.shape == (4, 8, 8) and cached.dtype == torch.float32
        torch.testing.assert_close(cached, nocache.get(*job), rtol=1e-5, atol=1e-5)


def test_editing_an_image_or_changing_settings_invalidates(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"1_a": 2})
    jobs = _jobs(root)
    LatentCache(vae, tmp_path / "cache", "cpu", torch.float32).encode_all(jobs)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jobs[0][0])  # the user edits one image
    cache = LatentCache(CountingVAE(vae), tmp_path / "cache", "cpu", torch.float32)
    assert cache.encode_all(jobs) == 1 and cache.vae.calls == 1
    assert cache.key(*jobs[1]) != cache.key(jobs[1][0], (64, 64), True)
    assert cache.key(*jobs[1]) != cache.key(jobs[1][0], (128, 64), False)
    other = LatentCache(vae, None, "cpu", torch.float64)
    assert other.key(*jobs[1]) != cache.key(*jobs[1])


def test_different_vae_weights_change_the_key(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"1_a": 1})
    job = _jobs(root)[0]
    other = build_tiny_pipeline("sd1", seed=1).vae
    assert LatentCache(vae, None, "cpu", torch.float32).key(*job) != LatentCache(other, None, "cpu", torch.float32).key(
        *job
    )


def test_cached_file_with_wrong_shape_is_re_encoded(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"1_a": 1})
    job = _jobs(root)[0]
    cache = LatentCache(CountingVAE(vae), tmp_path / "cache", "cpu", torch.float32)
    save_file({"latents": torch.zeros(4, 3, 3)}, str(tmp_path / "cache" / f"{cache.key(*job)}.safetensors"))
    (tmp_path / "cache" / "junk.safetensors").write_bytes(b"junk")
    assert cache.get(*job) is None
    assert cache.encode_all([job]) == 1 and cache.get(*job).shape == (4, 8, 8)


def test_nan_latents_are_a_user_error_naming_the_image(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"1_a": 1})
    job = _jobs(root)[0]

    class NanVAE(CountingVAE):
        def encode(self, x):
            out = self.inner.encode(x)
            out.latent_dist.mean.fill_(float("nan"))
            return out

    with pytest.raises(UserError, match="bf16") as e:
        LatentCache(NanVAE(vae), None, "cpu", torch.float32).encode_all([job])
    assert str(job[0]) in str(e.value)


def test_dataset_serves_cached_latents_for_both_flips(tmp_path, vae):
    root = make_image_dataset(tmp_path / "data", {"2_a": 2})
    ds = TrainDataset(scan_dataset(root), resolution=64, options=SubsetOptions(flip_aug=True), seed=0)
    jobs = ds.latent_jobs()
    assert len(jobs) == 4 and {f for *_, f in jobs} == {False, True}
    cache = LatentCache(vae, None, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="encode_all"):
        ds.attach_latents(cache)
    cache.encode_all(jobs, batch_size=4)
    assert not torch.equal(cache.get(*jobs[0]), cache.get(*jobs[1]))  # flipped latent is encoded, not mirrored
    ds.attach_latents(cache)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s["pixel_values"] is None and s["latents"].shape == (4, 8, 8) for s in samples)
    batch = collate(samples)
    assert batch["latents"].shape == (4, 4, 8, 8) and batch["pixel_values"] is None
