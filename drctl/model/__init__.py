"""The domain's data: frozen dataclasses, the intent state table, errors, the snapshot format.

Pure: imports nothing of drctl but itself. Everything else may import it.
"""
