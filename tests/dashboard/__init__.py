"""The dashboard (otter.dashboard): its I/O-free parts, its HTTP endpoints served for real, and a real browser."""
