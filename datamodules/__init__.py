"""LightningDataModules streaming the WebDataset shards written by ``python -m preprocess shard``.

Filled by the A2E and renderer issues; the sample layout they read is ``preprocess.schema``.
"""
