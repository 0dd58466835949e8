"""Bridges to other tools' plug-in points (each imports its tool; lavis_lite imports none of them)."""
