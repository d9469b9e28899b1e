"""Outbound traffic to addresses users give us: the egress guard and guarded downloads."""
