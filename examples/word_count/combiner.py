"""word_count step 3: group equal words and count them."""

from collections import Counter


def combine(event, ctx):
    return {"path": event["path"], "counts": dict(Counter(event["words"]))}
