"""Evaluation protocols read from files: pair lists and LFW ``pairs.txt``, IJB meta files and templates."""
