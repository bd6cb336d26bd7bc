"""The history read model: orders, fills and trades kept in SQLite outside the deterministic core."""
