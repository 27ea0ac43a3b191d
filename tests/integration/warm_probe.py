"""Imported by the warm-pool test's interpreters before any call arrives (the stand-in for the render's imports)."""

import time

IMPORTED_AT = time.time()
