"""From text files, the Hub or a stream to padded batches of token ids.

Sources, columns, labels, splits, tokenization, batching and the token cache.
"""
