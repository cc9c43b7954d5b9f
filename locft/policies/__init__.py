"""Policies decide, never measure: pure functions of numbers and states, no torch, no database."""
