"""Training data: kohya folder scan, image loading, captions, aspect-ratio buckets, the dataset and latent caching.

Modules (import them directly; this package imports nothing heavy on purpose):

- ``folder``: ``scan_dataset`` reads ``<repeats>_<concept>`` folders (and ``reg_data_dir``'s) into ``DatasetScan``;
  ``balance_reg`` is kohya's balance of regularisation images against training images.
- ``dataset_config``: kohya's dataset TOML (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``) into a scan.
- ``images``: ``load_image`` (EXIF, alpha onto white), ``fit_to_bucket`` (centered or random crop), kohya's face
  crop and colour augmentation, ``to_tensor``.
- ``subset``: ``SubsetOptions``, the caption and augmentation options of one subset (or of the whole run).
- ``captions``: ``process_caption`` (kohya's caption options: shuffle, keep_tokens, separators, prefix/suffix,
  wildcards, caption and tag dropout, token warm-up).
- ``buckets``: ``make_buckets``, ``assign_bucket``, ``bucket_table``, ``batches_per_epoch`` (torch-free).
- ``sampler``: ``BucketBatchSampler`` (deterministic per seed and epoch; resumes mid-epoch).
- ``dataset``: ``TrainDataset`` and ``collate``.
- ``latents``: ``LatentCache`` (memory + optional on-disk safetensors cache keyed by file bytes, bucket, flip, VAE).

The dataset check the UI shows before training is ``training.plan.dataset_check``.
"""
