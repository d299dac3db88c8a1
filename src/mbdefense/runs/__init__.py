"""Runs: the experiment spec, presets, the embedded world, workloads, the defense lifecycle, the stage cache, and grids."""
