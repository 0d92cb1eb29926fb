"""Built-in tracker stores: sqlite, cloudwatch."""
