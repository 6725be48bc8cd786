"""Jupyter widgets of iua_widgets: the live :class:`Dashboard` and the heatmap panel.

Imported on first use (``iua_widgets.Dashboard``), because ipywidgets,
anywidget and bqplot take a moment to load.
"""
