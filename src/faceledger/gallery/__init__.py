"""gallery: see ARCHITECTURE.md."""
