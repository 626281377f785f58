"""Datasets, feature extraction and subset selection."""
