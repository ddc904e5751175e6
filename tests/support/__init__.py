"""What the tests share (no test modules here): import as ``from support.helpers import THREADS``.

- ``synthetic``: small MNIST-style IDX data sets written on the fly (``make_synthetic``)
- ``helpers``: thread count, small networks, reference maths, GGUF reading and writing, random ``images()``
- ``handwriting``: pictures of handwritten digits drawn with Pillow, scans and photos of them
- ``photos``: photographed sheets of digits (perspective, lighting, JPEG)
- ``reliability``: memory, scale and kill campaigns, shared with tests/long/reliability_long.py
- ``fuzz_loaders``: the hypothesis fuzzer of the file loaders (also a script; its corpus is fuzz_corpus.json)

tests/ itself is on sys.path while pytest runs (its conftest.py sits there); scripts outside tests/ (bench/,
tests/long/) insert it before importing ``support``.
"""
