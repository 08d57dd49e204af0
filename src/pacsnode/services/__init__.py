"""PS3.4 service classes, one module per annex."""
