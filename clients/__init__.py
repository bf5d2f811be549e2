"""Clients that speak the public spiritlm-agent protocol."""
