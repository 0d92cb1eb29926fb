"""word_count step 2: split the contents into words, a word being a maximal run of letters, lowercased."""


def parse(event, ctx):
    words, current = [], []
    for char in event["contents"]:
        if char.isalpha():
            current.append(char)
        elif current:
            words.append("".join(current).lower())
            current = []
    if current:
        words.append("".join(current).lower())
    ctx.logger.info("%d words", len(words))
    return {"path": event["path"], "words": words}
