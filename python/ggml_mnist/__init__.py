"""ggml-mnist: train and run IDX image classifiers on ggml."""
