"""cc-sidecar: hands Customer's Canvas customer tokens to a legacy shop's editor pages."""

from proxy.compiled import choose_build

__version__ = "0.1.0"

# Before any other proxy module is imported: compiled, or (CC_SIDECAR_PURE_PYTHON=1) the source.
choose_build()
