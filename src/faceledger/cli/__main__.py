"""``python -m faceledger.cli``: the ``faceledger`` command."""

from faceledger.cli import app

if __name__ == "__main__":
    app()
