"""The kernel interface: bpf(2), the assembler, maps, programs, links, stats, bpffs.

Knows nothing of units or policies; nothing here imports the rest of ipacctd except
the shared exception hierarchy (:mod:`ipacctd.errors`), the C library (:mod:`ipacctd.libc`)
and the kernel structs (:mod:`ipacctd.uapi`). The kernel's enums and flags are in
:mod:`ipacctd.bpf.types`.
"""
