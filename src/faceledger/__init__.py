"""faceledger: self-hosted face search with accountability built in."""

__version__ = "0.1.0"
