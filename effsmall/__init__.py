"""effsmall: efficient small sequence models, from naive to optimized.

The companion package of the effsmall book. Every algorithm exists as a naive reference and
as faster versions proven equal to it by the tests:

- ``effsmall.hardware``  devices, memory hierarchies, measured ceilings, rooflines (chapter 2)
- ``effsmall.costs``     FLOPs and bytes moved by the layers of a sequence model (chapter 1)
- ``effsmall.modelcards`` real small-model configurations as data (Phi-3, TinyLlama, ...)
- ``effsmall.measure``   timing (eager, CUDA graph, host), the memory meter, saved results
- ``effsmall.bench``     the benchmark suites: ``python -m effsmall.bench <suite>``
- ``effsmall.widgets``   the book's explorers, which run in the reader's browser (chapters 2, 5, 11)
- ``effsmall.attention``, ``effsmall.ssm``, ``effsmall.offload``, ``effsmall.models``, ... the ladders
- ``effsmall.dist``      tensor, sequence and context parallelism on ``torch.distributed`` (chapter 15)

Triton kernels run on a CUDA GPU, or on the CPU under the Triton interpreter. Importing
``effsmall`` on a machine without CUDA sets ``TRITON_INTERPRET=1`` (unless you set it
yourself) *before* any kernel is defined, because Triton decides at decoration time whether
a ``@triton.jit`` function is compiled or interpreted.
"""
from effsmall import runtime as _runtime

_runtime.configure_triton_interpreter()

__version__ = "0.1.0"
__all__ = ["__version__"]
