"""What people look at: figures (``plots``)."""
