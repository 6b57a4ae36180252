"""Cluster PKI: the certificate inventory, issuing, and what each node receives."""
