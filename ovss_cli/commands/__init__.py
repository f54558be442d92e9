"""Thin Typer commands: each parses options, validates, and calls one engine function."""
