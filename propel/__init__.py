"""Propel: recommendation and prediction service for data-driven marketing."""

import os

__version__ = "0.1.0"

# DuckDB's and Arrow's allocators keep freed memory a while for reuse instead of handing it back to the OS at once:
# on a virtual machine a page fault costs ~8 us, and the feature build faulted its query and Arrow buffers in afresh
# batch after batch (1M customers: 13.6M faults, a fifth of its CPU time; with these 10.4M, 1.19x faster, peak RSS
# 4.6 -> 4.9 GiB). Read when the libraries load, so set here, before they are imported; the user's own values win.
os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", "dirty_decay_ms:20000,muzzy_decay_ms:20000")
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "20000")
# numpy asks for transparent huge pages for large arrays; here a huge page's fault (zeroing 2 MB, compacting memory
# first when the page cache fills it) cost more than the small pages it saves: the 1M build's per-batch matrices
# were filled 5x slower, the build 1.06x slower
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
