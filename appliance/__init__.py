"""The knowledge appliance: the read/serve path and the product shell."""

__version__ = "0.1.0"
