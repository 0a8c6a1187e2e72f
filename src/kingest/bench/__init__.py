"""``kingest bench``: kingest's producer against a plain boto3 loop and the seed's producer.

:mod:`kingest.bench.runner` starts the endpoints, runs every implementation in a worker process
of its own (:mod:`kingest.bench.worker`) so that CPU time and peak memory are that process's
alone, checks what reached the stream and prints the table. :mod:`kingest.bench.seed_producer`
is the specification's sketch, kept as-is for comparison.
"""

IMPLEMENTATIONS = ("kingest", "boto3", "seed")
ENDPOINTS = ("embedded", "null")
