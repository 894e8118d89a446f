"""Unit policy: properties (IPAccounting=, IPAddressAllow=/Deny=, ...), unit files and names.

Pure Python; nothing here touches the kernel. Import the submodule that holds what you need
(``properties``, ``addresses``, ``unitfile``, ``names``): the CLI's ``run`` needs only
``properties``, and importing one does not import the others.
"""
