"""Delivery formats of a node's file set."""
