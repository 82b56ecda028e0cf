"""kopf handlers: thin I/O edges around the pure decisions."""
