"""Retrieval: fusion of dense and sparse results, language detection and ranking metrics."""
