"""The test oracle: float64 plain recurrences written for clarity, one module per op family.

Never imports the code under test. Every test compares against these.
"""
