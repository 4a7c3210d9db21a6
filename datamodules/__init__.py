"""LightningDataModules streaming the WebDataset shards written by ``python -m preprocess shard``.

The sample layout they read is ``preprocess.schema``; ``shard_stream`` holds the DDP/worker
splitting every stage shares.
"""
