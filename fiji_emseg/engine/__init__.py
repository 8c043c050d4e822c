"""GUI-free core: data and IO, model factory, training, tiled inference, metrics. No Java here."""
