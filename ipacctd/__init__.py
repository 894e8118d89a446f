"""ipacctd: per-service IP accounting and IP address firewall on cgroup_skb eBPF."""

__version__ = "0.2.6"
