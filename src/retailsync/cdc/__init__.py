"""Change data capture: decoding the write-ahead log into change events."""
