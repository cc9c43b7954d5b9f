"""locft: lifelong knowledge editing with localized, breadth-first fine-tuning (LocFT-BF)."""

__version__ = "0.1.0"
