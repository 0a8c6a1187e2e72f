"""Change data capture: PostgreSQL logical replication and the MySQL/MariaDB row binlog."""
