"""gridctl opcua_server."""
