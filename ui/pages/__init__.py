"""Gradio pages: each module lays out one tab and wires its events to `appliance` services."""
