"""A variants file that fails while it is loaded."""
x = 1 / 0
