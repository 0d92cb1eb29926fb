"""word_count step 1: read the uploaded file (a local path, or s3://bucket/key on AWS)."""


def read_file(event, ctx):
    path = event["path"]
    ctx.logger.info("reading %s", path)
    if path.startswith("s3://"):
        import boto3

        bucket, _, key = path[len("s3://"):].partition("/")
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        contents = body.decode("utf-8")
    else:
        with open(path, encoding="utf-8") as handle:
            contents = handle.read()
    ctx.publish("FileDownloaded", {"path": path, "contents": contents})
