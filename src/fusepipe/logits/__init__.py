"""Teacher-forced top-k captures (`logits` stage): the shard format lives in `fusepipe.logits.store`
(`SampleLogits`, `ShardWriter`, `read_shard`, `read_sample`, `bytes_per_token`); docs/logits.md describes it."""
