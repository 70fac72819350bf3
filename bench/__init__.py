"""`make bench`: figures measured on this machine (not tests; see bench/run.py)."""
