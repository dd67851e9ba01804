"""cc-sidecar: hands Customer's Canvas customer tokens to a legacy shop's editor pages."""

__version__ = "0.1.0"
