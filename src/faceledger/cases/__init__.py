"""cases: see ARCHITECTURE.md."""
