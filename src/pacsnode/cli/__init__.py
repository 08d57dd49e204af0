"""The `pacsnode` command line."""
