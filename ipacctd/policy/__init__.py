"""Unit policy: properties (IPAccounting=, IPAddressAllow=/Deny=, ...), unit files and names.

Pure Python; nothing here touches the kernel.
"""

# The names below are loaded on first use (PEP 562), so that importing one submodule (the
# CLI's ``run`` needs only ``properties``) does not import the others.
_EXPORTS = {
    "AddressList": "addresses",
    "Network": "addresses",
    "parse_words": "addresses",
    "reduce": "addresses",
    "transient_name": "names",
    "validate_unit_name": "names",
    "PROPERTIES": "properties",
    "DenyMode": "properties",
    "Properties": "properties",
    "PropertySpec": "properties",
    "parse_assignment": "properties",
    "UnitFile": "unitfile",
    "load_unit_dir": "unitfile",
    "load_unit_file": "unitfile",
    "parse_unit_file": "unitfile",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
