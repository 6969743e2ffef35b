"""Slack interactivity: verify a request, parse it, check who sent it, and apply it."""
