"""Proofs that a transformed network costs and computes what it should."""
