"""Evaluation: FAISS search, retrieval/verification/identification metrics, protocols (pairs, LFW, IJB),
reports, tables and plots. Never imports training."""
