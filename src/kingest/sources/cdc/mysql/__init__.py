"""MySQL and MariaDB change data capture from the row-based binlog (python-mysql-replication).

``source.py`` holds the config and the source, ``reader.py`` the binlog thread, ``stream.py`` its
connection to the binlog, ``dispatch.py`` what each binlog event does, ``channel.py`` the
hand-over to the event loop, ``assembler.py`` the transactions, ``rows.py`` the column names and
rows, ``decode.py`` the types, ``charsets.py`` the character sets, ``schema.py`` the column
names from information_schema, ``server.py`` the server checks and ``position.py`` the position
type.
"""
