"""Shared geometry helpers below backbones, adapters and data: point grouping (:mod:`.points`) and camera
condition maps (:mod:`.cameras`)."""
