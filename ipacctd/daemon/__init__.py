"""The daemon: D-Bus API, Prometheus exporter, polling, unit files bound to live cgroups."""
