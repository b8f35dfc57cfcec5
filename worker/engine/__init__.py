"""The method, in torch alone: models, transforms, optimization, entropy and pictures.

Nothing here knows Celery, Redis, HTTP or files; functions take tensors and explicit
configuration (the pydantic specs in ``specs``) and return tensors or plain results.
"""

import os

# Intel MKL (PyTorch's BLAS on x86 CPUs) may split a small matrix product between threads in a
# varying way unless told to be reproducible: on an AVX-512 VM with 2 threads, lite0's input
# gradient of one small image (50 px) came out different from run to run. MKL reads this when
# it first computes, so it is set as the engine is imported; no measured cost here (set
# MKL_CBWR yourself to choose otherwise).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
