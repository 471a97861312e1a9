"""The admin socket: protocol, command handlers, server (in the master) and client (CLI)."""
