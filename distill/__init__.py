"""distill: models, heads, losses, the student trainer and FAISS evaluation — everything after the store."""
