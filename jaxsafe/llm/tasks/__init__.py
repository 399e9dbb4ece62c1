"""Synthetic language tasks with exact oracles: :mod:`.safety_language`, :mod:`.arithmetic`."""
