"""ledger: see ARCHITECTURE.md."""
