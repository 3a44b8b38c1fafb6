"""Know before you queue: memory estimate, layout planner, sweeps (docs/planning.md)."""
