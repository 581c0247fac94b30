"""The Keras 3 adapter: Functional and Sequential models, nested and shared submodels, on the
TensorFlow, JAX and PyTorch backends.

``adapter.py``   the graph, inputs, probed runs, replay from a layer (backend-free)
``patches.py``   what is set on layer instances while explaining, always put back
``compiled.py``  compiled programs on TensorFlow and JAX, and the cache that owns them
``backends/``    one module per Keras backend, the same names in each
"""

from .adapter import KerasAdapter, clear_graph_cache, is_keras_model, keras_to_numpy, load_keras_file
from .compiled import PROGRAMS, ProgramCache, clear_compiled_cache

__all__ = ["KerasAdapter", "is_keras_model", "keras_to_numpy", "load_keras_file", "PROGRAMS",
           "ProgramCache", "clear_compiled_cache", "clear_graph_cache"]
