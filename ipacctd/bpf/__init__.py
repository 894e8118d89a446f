"""The kernel interface: bpf(2), the assembler, maps, programs, links, stats, bpffs.

Knows nothing of units or policies; nothing here imports the rest of ipacctd except
the shared exception hierarchy (:mod:`ipacctd.errors`) and the C library
(:mod:`ipacctd.libc`). The kernel's enums and flags are in :mod:`ipacctd.bpf.types`.
"""
