"""Shared fixtures. The Keras backend is fixed before anything imports keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch's CUDA builds load triton with torch._dynamo (torch.export, torchvision.ops), and
# triton loaded after TensorFlow crashes the process (a segmentation fault, seen with torch
# 2.14.1, triton 3.8 and tensorflow-cpu 2.21); loaded before it, both work. The test run loads
# it first; camlens itself refuses to call torch.export in the crashing order (see
# camlens.adapters.torch.adapter._exported).
try:
    import torch._dynamo  # noqa: F401
except Exception:  # torch not installed, or a build without it
    pass
