"""Runnable examples of nplus1loader (not part of the installed library)."""
