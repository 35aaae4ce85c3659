"""netmon: passive HTTP/1.x bandwidth monitor."""

__version__ = "0.1.0"
