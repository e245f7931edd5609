"""CARE: predict how a client experienced a counseling session (working alliance), item by item."""

__version__ = "0.1.0"
