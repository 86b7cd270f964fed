"""Training: the teacher and student trainers, resume identity, DDP and training curves."""
