"""The reference gateway and the pure-Python pieces the control plane shares with it.

Nothing in this package imports Django: a gateway vendor can read and reuse it as is.
"""
