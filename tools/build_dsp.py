"""Build MindScript's DSP kernels (native/dsp/msdsp.c) for this machine's CPU (run by `make setup`).

    python tools/build_dsp.py                 # mindscript/_native/libmsdsp.so, if missing or out of date
    python tools/build_dsp.py --force         # rebuild
    DSP_MARCH=x86-64-v3 python tools/build_dsp.py --out /opt/mindscript/libmsdsp.so   # for other machines

The kernels are the inner loops of the loudness meter (K-weighting, per 100 ms step), the true-peak
interpolator and the limiter's release, which mindscript/dsp runs in numpy where this library is missing
(mindscript/dsp/_native.py says which runs). Built with ``-O3 -march=native`` and none of -ffast-math's
parts: the meter's float64 recursion keeps its order of operations. No C compiler: the build says so and
exits 0 (``--strict``: exit 1). ``CC`` (default ``cc``) is the compiler, ``DSP_MARCH`` (default ``native``)
the ``-march`` target.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_lame  # noqa: E402  (the shared compile-and-stamp step)

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "native" / "dsp"
DEFAULT_OUT = ROOT / "mindscript" / "_native" / "libmsdsp.so"
# what mindscript/dsp/_native.py calls; a library without one of these is not used
REQUIRED = ("ms_abi_version", "ms_kweight", "ms_envelope", "ms_limit", "ms_mix", "ms_crc16")
FALLBACK = "the DSP kernels run in numpy"


def flags(march: str) -> list[str]:
    out = ["-shared", "-fPIC", "-O3", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
    return out + ([f"-march={march}"] if march else [])


def build(out: Path, *, force: bool = False) -> tuple[bool, str]:
    """(built or up to date, what happened)."""
    return build_lame.build_library(out, files=sorted(SOURCE.glob("*.c")), headers=sorted(SOURCE.glob("*.h")),
                                    flags=flags, required=REQUIRED, march=os.environ.get("DSP_MARCH", "native"),
                                    fallback=FALLBACK, force=force)


def main(argv: list[str] | None = None) -> int:
    return build_lame.command(argv, doc=__doc__ or "", default_out=DEFAULT_OUT, name="build_dsp", build_fn=build)


if __name__ == "__main__":
    sys.exit(main())
