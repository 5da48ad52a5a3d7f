"""Point the peers' OpenBLAS at this CPU's best kernels, before numpy is imported.

faiss-cpu bundles OpenBLAS 0.3.15, which takes an AVX-512 Zen 4 for plain "Zen" and runs its
AVX2 kernels there; ``OPENBLAS_CORETYPE=SkylakeX`` gives it (and numpy's and scipy's
OpenBLAS) the AVX-512 kernels. On a CPU without AVX-512 that setting makes OpenBLAS execute
instructions the CPU lacks (the process dies with SIGILL), so it is set only where the CPU
reports ``avx512f``, and never over a value the caller chose.
"""

from __future__ import annotations

import os


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def prefer_avx512_openblas() -> None:
    """Set OPENBLAS_CORETYPE=SkylakeX when unset and the CPU has AVX-512F."""
    if "OPENBLAS_CORETYPE" not in os.environ and "avx512f" in cpu_flags():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
