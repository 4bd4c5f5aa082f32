"""gridctl drivers sim."""
