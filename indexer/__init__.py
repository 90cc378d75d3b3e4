"""The indexing pipeline: discover -> decode -> masks (SAM AMG) -> crops -> CLIP -> store.

Each stage is a plain function or small class usable alone; ``pipeline.Indexer`` wires them
together and owns batching, progress and the consistency protocol.
"""
