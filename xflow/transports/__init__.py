"""Built-in transports: local (SQLite log), kinesis, kafka."""
