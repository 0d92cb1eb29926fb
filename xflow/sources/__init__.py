"""Where function code comes from: local paths, s3:// objects, git and GitHub links."""
