"""What travels between nodes: message schemas (`messages`) and their wire encoding (`codec`).

Imports nothing of drivecast but `pipeline.errors`; every other package builds on it.
"""
