"""word_count step 4: keep only real words (non-empty, letters only)."""


def filter(event, ctx):
    counts = {word: n for word, n in event["counts"].items() if word and word.isalpha()}
    dropped = len(event["counts"]) - len(counts)
    if dropped:
        ctx.logger.info("dropped %d non-words", dropped)
    return {"path": event["path"], "counts": counts}
