"""Training frameworks: a `Regularizer` as a Lightning or Hugging Face ``Trainer`` callback, and
reports written to TensorBoard.

Each submodule imports its framework, an optional extra (``pip install
torchpenalty[lightning]``, ``[transformers]``, ``[tensorboard]``); this package imports none.
"""
