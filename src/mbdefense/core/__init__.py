"""The lowest layer: errors, atomic file writes and the one registry type. Imports nothing else
of mbdefense."""
