"""Reporting: atomic file writes, image grids, plots, the HTML run report and Markdown tables.

``gradleak.report.writer`` (which assembles a whole run directory) is deliberately not imported
here: it depends on the attack/metrics stack, while everything below needs only Pillow,
matplotlib and Jinja2.
"""
from gradleak.imagegrid import image_rows, reconstruction_grid, tensor_to_pil
from gradleak.report.html import data_uri, render_report, write_report
from gradleak.atomic import (
    atomic_save_figure,
    atomic_save_image,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from gradleak.report.plots import line_plot, loss_plot, scatter_plot, write_trace_csv
from gradleak.report.tables import format_cell, sweep_table

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_figure",
    "atomic_save_image",
    "tensor_to_pil",
    "reconstruction_grid",
    "image_rows",
    "loss_plot",
    "write_trace_csv",
    "line_plot",
    "scatter_plot",
    "write_report",
    "render_report",
    "data_uri",
    "sweep_table",
    "format_cell",
]
