"""gridctl drivers."""
