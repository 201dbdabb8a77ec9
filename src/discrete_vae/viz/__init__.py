"""Figures that illustrate the methods of the toolkit (matplotlib, Agg backend)."""
