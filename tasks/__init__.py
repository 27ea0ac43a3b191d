"""Thin Prefect tasks: build services from settings, call mindscript, return small references."""
