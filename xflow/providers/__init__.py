"""Built-in function providers: local worker processes, AWS Lambda."""
