"""Widgets of the dashboard, and the small data models they draw from."""

from __future__ import annotations
