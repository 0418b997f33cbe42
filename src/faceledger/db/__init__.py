"""db: the database every domain keeps its rows in (tables, engine, binding of a data dir)."""
