"""The PyTorch adapter: any ``torch.nn.Module``.

``adapter.py``  the graph (an fx trace, or the run order), inputs, probed runs, the replay from
                a layer
``patches.py``  eval mode, hooks and instance ``forward``s while explaining, always put back
``ops.py``      the array functions targets use, probes, captures as numpy
"""

from .adapter import TorchAdapter, clear_trace_cache, is_torch_module

__all__ = ["TorchAdapter", "is_torch_module", "clear_trace_cache"]
