"""Fine-tuning the encoder with a head: ``backbone`` (a trainable encoder saved as a sentence-transformers
directory) and ``finetune`` (the transformers Trainer set-up, checkpoints, the saved model)."""
