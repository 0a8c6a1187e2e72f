"""Sources: where records come from. Each is a config (``type: ...``) and a class.

``base.py`` holds the source interface and the ack tracker; ``registry.py`` the configs the
agent accepts; one folder per source (``weblog/``, ``simulate/``).
"""
