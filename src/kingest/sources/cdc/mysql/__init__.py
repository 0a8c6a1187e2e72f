"""MySQL and MariaDB change data capture from the row-based binlog (python-mysql-replication).

``source.py`` holds the config and the source, ``reader.py`` the binlog thread, ``assembler.py``
the transactions, ``decode.py`` the types, ``schema.py`` the column names from
information_schema, ``server.py`` the server checks and ``position.py`` the position type.
"""
