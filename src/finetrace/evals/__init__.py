"""Evaluations of what a fine-tune damaged."""
