"""Captioning a dataset: ``python -m training.caption DATASET_DIR --tagger MODEL | --captioner MODEL``.

Modules (this package imports nothing heavy at the top; onnxruntime and transformers load only when a model does):

- ``tags``: ``selected_tags.csv`` read into ``Tag``s, tags picked from scores by category and threshold and
  written the way WD14 taggers' users expect (underscores, kaomoji, parentheses).
- ``tagger``: ``Wd14Tagger``, a WD14-style ONNX tagger run with onnxruntime, and its exact preprocessing.
- ``captioner``: ``load_captioner``: BLIP, Florence-2 and chat vision-language models through transformers.
- ``models``: a MODEL argument turned into a checked local folder (a folder, or a hub id from the cache or the hub).
- ``compose``: the caption written: trigger first, excluded tags, merged with an existing caption.
- ``images``: the images of a dataset folder (kohya's ``N_concept`` folders, recursively) and opening them.
- ``job``: the loop over the images: batches, atomic writes, progress, events, stop, summary.
- ``events``: ``--events FILE``, one JSON object a line, for the UI.
- ``bench``: ``python -m training.caption.bench``, images per second of a tagger and a captioner.
- ``tiny``: tiny models (a channel-mean tagger; random BLIP, Florence-2, a LLaVA-style chat model) for tests and
  the benchmark.

It may import ``training.contract`` and ``training.data``; never ``training.run``. The UI runs it as a child process.
"""
