"""Run directories: reading them, the comparison table and plot, the review gate."""
