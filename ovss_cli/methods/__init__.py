"""One module per method; each builds its model (and loss) from a recipe and never imports the engine."""
