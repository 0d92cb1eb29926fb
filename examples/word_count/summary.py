"""word_count step 5: the count of every unique word, and the total."""


def summarize(event, ctx):
    counts = dict(sorted(event["counts"].items(), key=lambda item: (-item[1], item[0])))
    ctx.publish("FileSummarized", {"path": event["path"], "counts": counts, "total": sum(counts.values())})
