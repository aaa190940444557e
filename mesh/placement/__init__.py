"""Placement: which runtime instance holds which model, loading on a miss and evicting cluster-wide LRU."""
