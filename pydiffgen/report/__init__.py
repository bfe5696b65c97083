"""Figures and self-contained HTML reports."""

from .html import Report

__all__ = ["Report"]
