"""The benchmark suite: ``make bench`` (or ``.venv/bin/python -m bench.run``); see README.md."""
