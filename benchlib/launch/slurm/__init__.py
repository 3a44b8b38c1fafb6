"""Slurm: submit rendered runs (`submit`), read job state (`queue`), follow and stop runs (`cli`).

Nothing here imports torch; everything works on a login node with only the Slurm client tools.
"""
