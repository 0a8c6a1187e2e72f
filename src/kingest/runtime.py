"""Process-wide tuning that kingest's own commands apply (a library never does it by itself).

An agent holds up to ``max_buffer_records`` live records, each a tracked object; with the
interpreter's default thresholds the cyclic garbage collector rescans them over and over, which
measured as about a fifth of the send path's CPU. Objects alive after start-up are frozen out of
the collector's sight, and the first threshold is raised so collections run far less often.
Reference counting still frees every record the moment it is done, so memory use is unchanged.

The thread putting records and the producer's sender thread also trade the interpreter lock
every 5 ms by default, each time on the other core with the other's records to fetch from its
cache. A longer switch interval lets each work in longer stretches; a thread that blocks (the
sender waiting on its sockets, a put() waiting for buffer room) still hands over at once. It is
kept at the producer's default linger, the delay records already accept before they are sent.

A source that reads in a thread of its own (a database's replication client) is the exception:
its thread and the event loop both have work all the time, and with 0.1 s turns every change
would wait up to that long twice over. :func:`tune_for_reader_threads` goes back to the default.
"""

from __future__ import annotations

import gc
import sys

# Allocations between young-generation collections (the interpreter's default is 700).
GC_YOUNG_THRESHOLD = 50_000
# Seconds a running thread keeps the interpreter lock when another wants it (default 0.005).
SWITCH_INTERVAL_S = 0.1
DEFAULT_SWITCH_INTERVAL_S = 0.005


def tune_for_throughput() -> None:
    """Apply the tuning to this process (idempotent)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def tune_for_reader_threads() -> None:
    """Short interpreter lock turns, for a process whose sources read in threads."""
    sys.setswitchinterval(min(sys.getswitchinterval(), DEFAULT_SWITCH_INTERVAL_S))
