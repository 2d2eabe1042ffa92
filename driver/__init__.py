"""The Schooner driver: sweeps deployment configurations, generates load, reports the best one.

Entry points: ``python driver/driver.py``, ``python -m driver``, ``schooner-driver``
(:func:`driver.driver.main`).
"""
