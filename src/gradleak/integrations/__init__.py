"""Integrations with FL frameworks: capture what a real server receives as gradleak Observations.

Each integration lives in its own module and imports its framework only when that module is imported
(``import gradleak`` never imports them):

* :mod:`gradleak.integrations.flower` — a Flower Strategy wrapper (``pip install gradleak[flower]``).
"""
