"""Process memory settings for training on CPU.

glibc's malloc raises its mmap threshold (up to 32 MiB) after large buffers are freed; activation tensors of
a few MB then come from the heap and are kept after being freed instead of going back to the system. On a
ViT-B step at 512 px this adds 300-500 MB of resident memory to every mode and hides what adapters save
(BENCHMARKS.md: LoRA 0.57x the added memory of full fine-tuning with the default, 0.46x with a 1 MiB
threshold). ``vadapt fit`` therefore fixes the threshold at 1 MiB, as the environment variable
``MALLOC_MMAP_THRESHOLD_=1048576`` would; library users can call :func:`return_freed_memory_to_os`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 20


def return_freed_memory_to_os(threshold: int = THRESHOLD_BYTES) -> bool:
    """Serve allocations above ``threshold`` bytes with mmap (freed at once); ``True`` if glibc took it.

    Does nothing where the C library is not glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is already set.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
