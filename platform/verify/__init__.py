"""Verification: the validator, signed-content checks, incident reports and proofs of
liabilities.
"""
