"""The counters as front doors see them: the value type and the one table of their names.

``cli/`` and ``daemon/`` import these from here, not from ``datapath/`` (the layer below the
manager); the table itself lives beside the map layout it describes,
:mod:`ipacctd.datapath.counters`.
"""

from ipacctd.datapath.counters import (
    COUNTERS,
    EXTRA_COUNTERS,
    METRIC_HELP,
    SYSTEMD_COUNTERS,
    Counters,
    CounterSpec,
    Direction,
    Kind,
    counter,
)

__all__ = [
    "COUNTERS",
    "EXTRA_COUNTERS",
    "METRIC_HELP",
    "SYSTEMD_COUNTERS",
    "CounterSpec",
    "Counters",
    "Direction",
    "Kind",
    "counter",
]
