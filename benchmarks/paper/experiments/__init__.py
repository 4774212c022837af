"""The experiments, one module per family; each phase function takes the shared :class:`~paper.run.Run`."""
