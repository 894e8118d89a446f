"""Unit policy: properties (IPAccounting=, IPAddressAllow=/Deny=, ...), unit files and names.

Pure Python; nothing here touches the kernel.
"""

from ipacctd.policy.addresses import AddressList, Network, parse_words, reduce
from ipacctd.policy.names import transient_name, validate_unit_name
from ipacctd.policy.properties import (
    PROPERTIES,
    DenyMode,
    Properties,
    PropertySpec,
    parse_assignment,
)
from ipacctd.policy.unitfile import UnitFile, load_unit_dir, load_unit_file, parse_unit_file

__all__ = [
    "PROPERTIES",
    "AddressList",
    "DenyMode",
    "Network",
    "Properties",
    "PropertySpec",
    "UnitFile",
    "load_unit_dir",
    "load_unit_file",
    "parse_assignment",
    "parse_unit_file",
    "parse_words",
    "reduce",
    "transient_name",
    "validate_unit_name",
]
