"""The integrated demo: four real sources into one stream, and the proof that nothing was lost."""
