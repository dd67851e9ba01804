"""cc-sidecar: hands Customer's Canvas customer tokens to a legacy shop's editor pages."""

from proxy.compiled import prefer_source

__version__ = "0.1.0"

# Before any other proxy module is imported: CC_SIDECAR_PURE_PYTHON=1 means their source.
prefer_source()
