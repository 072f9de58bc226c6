"""Wire formats and sans-IO protocol code: task/worker/config schemas, JSON-RPC, worker dialects.

Nothing here performs I/O or imports the rest of Shoal, so every module can be tested with plain
values and bytes.
"""
