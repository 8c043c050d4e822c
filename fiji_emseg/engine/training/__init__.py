"""Training: the training configuration, losses, patch sampling and augmentation, the training
loop with checkpoints and logs, and threshold calibration on validation slices.

May import: every other stage (``inference`` to predict validation slices, ``evaluation`` to
score them); nothing imports training.
"""
