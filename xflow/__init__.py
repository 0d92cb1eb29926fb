"""xflow: event-driven workflows on pluggable transports, providers and trackers."""
