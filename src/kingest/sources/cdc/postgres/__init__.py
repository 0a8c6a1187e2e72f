"""PostgreSQL change data capture over logical replication with the built-in pgoutput plugin."""
