"""gridctl hmi."""
