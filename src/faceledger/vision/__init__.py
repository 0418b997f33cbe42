"""vision: see ARCHITECTURE.md."""
