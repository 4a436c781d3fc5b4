"""A variants file that calls sys.exit while it is loaded."""
import sys

sys.exit(3)
